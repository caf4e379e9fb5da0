"""data2vec 2.0 for speech (Baevski et al., 2022, arXiv:2212.07525) on the wav2vec 2.0 encoder.

    wav -> conv (or spectrogram) features -> projection x                              (B, T, D)
    teacher (EMA of the Transformer, eval mode) on x unmasked, no gradient:
        FFN outputs of its top K layers -> instance norm over time per layer -> mean    (B, T, D)
    student: x cloned M times, each clone its own span mask (mask embedding), the Transformer,
        then the light conv decoder                                                  (B*M, T, D)
    loss: L2 between student prediction and teacher target at the masked frames.

The encoder keeps `Wav2Vec2Model`'s names (feature_extractor, feature_norm, feature_projection,
masker, encoder), so `extract`, `probe` and `finetune --init-from` read a checkpoint of this model
as a wav2vec 2.0 encoder; `teacher.` and `decoder.` are pretraining heads (docs/fairseq_differences.md
lists where this departs from fairseq's `data2vec_multi`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from w2vkit.config import check
from w2vkit.model.config import ModelConfig
from w2vkit.model.decoder import ConvDecoder
from w2vkit.model.ema import ema_update_
from w2vkit.model.normalize import instance_norm_over_time
from w2vkit.model.transformer import EncoderLayer, TransformerEncoder
from w2vkit.model.wav2vec2 import FrontendOutput, Wav2Vec2Model


@dataclass(kw_only=True)
class Data2Vec2Config:
    """The data2vec 2.0 section of a run; defaults are fairseq's `base_audio_only_task.yaml`."""

    num_clones: int = 8
    """Masked copies of each utterance sharing one teacher pass (fairseq `clone_batch`)."""
    average_top_k_layers: int = 8
    instance_norm_target_layer: bool = True
    """Normalise each teacher layer over time before averaging (the paper's choice for audio)."""
    ema_decay: float = 0.999
    ema_end_decay: float = 0.99999
    ema_anneal_end_step: int = 75000
    """The decay rises linearly from `ema_decay` to `ema_end_decay` over these updates."""
    loss_scale: float = 0.0
    """Multiplier of the squared error; 0 means 1/sqrt(model_dim) (fairseq `loss_scale: null`)."""
    decoder_dim: int = 384
    decoder_kernel: int = 7
    decoder_groups: int = 16
    decoder_layers: int = 4
    decoder_input_dropout: float = 0.1

    def __post_init__(self) -> None:
        check(self.num_clones >= 1, "data2vec2.num_clones", "must be >= 1")
        check(self.average_top_k_layers >= 1, "data2vec2.average_top_k_layers", "must be >= 1")
        check(
            0.0 <= self.ema_decay <= self.ema_end_decay <= 1.0,
            "data2vec2.ema_end_decay",
            f"need 0 <= ema_decay <= ema_end_decay <= 1, got {self.ema_decay}, {self.ema_end_decay}",
        )
        check(self.ema_anneal_end_step >= 0, "data2vec2.ema_anneal_end_step", "must be >= 0")
        check(self.loss_scale >= 0, "data2vec2.loss_scale", "must be >= 0 (0 = 1/sqrt(dim))")
        for name in ("decoder_dim", "decoder_kernel", "decoder_groups", "decoder_layers"):
            check(getattr(self, name) >= 1, f"data2vec2.{name}", "must be >= 1")
        check(
            self.decoder_dim % self.decoder_groups == 0,
            "data2vec2.decoder_groups",
            f"decoder_dim {self.decoder_dim} is not divisible by {self.decoder_groups}",
        )
        check(
            0.0 <= self.decoder_input_dropout < 1.0,
            "data2vec2.decoder_input_dropout",
            "must be in [0, 1)",
        )


@dataclass
class Data2Vec2Output:
    prediction: Tensor
    """(N, D) the decoder's output at the N masked frames of all clones, row-major (clone, t)."""
    target: Tensor
    """(N, D) fp32 teacher targets at the same frames."""
    time_mask: Tensor
    """(B*M, T) True = masked; clone m of utterance b is row b*M + m."""
    frame_padding_mask: Tensor | None
    """(B*M, T) True = padded."""


class EMATeacher(nn.Module):
    """An EMA copy of the student's Transformer, and how many updates it has followed."""

    def __init__(self, encoder: TransformerEncoder) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.updates = -1
        """Updates folded in; -1: not yet copied from the student (its weights may be loaded
        after construction, e.g. by --init-from)."""

    def get_extra_state(self) -> Tensor:
        return torch.tensor(self.updates)

    def set_extra_state(self, state: Tensor) -> None:
        self.updates = int(state)

    def follow(self, student: nn.Module, step: int, decay: float) -> None:
        """Fold in the student after update `step` (once per update, however many micro-batches)."""
        if self.updates < 0:
            self.encoder.load_state_dict(student.state_dict())
            self.updates = 0
        if self.updates < step:
            ema_update_(self.encoder, student, decay)
            self.updates = step


def teacher_targets(
    teacher: TransformerEncoder,
    x: Tensor,
    padding_mask: Tensor | None,
    top_k: int,
    instance_norm: bool,
) -> Tensor:
    """Mean of the FFN outputs (before the last residual) of the top `top_k` layers, each first
    normalised over time per utterance and channel. Shape: x (B, T, D) -> (B, T, D) fp32."""
    outputs: list[Tensor] = []
    handles = []
    for layer in teacher.layers[-top_k:]:
        assert isinstance(layer, EncoderLayer)
        handles.append(layer.fc2.register_forward_hook(lambda _m, _i, out: outputs.append(out)))
    try:
        teacher(x, padding_mask)
    finally:
        for handle in handles:
            handle.remove()
    frames = x.shape[1]
    # fc2 sees the encoder's input padded to `required_seq_len_multiple`: keep the real frames.
    normed = [
        instance_norm_over_time(out[:, :frames], padding_mask)
        if instance_norm
        else out[:, :frames].float()
        for out in outputs
    ]
    return torch.stack(normed).mean(0)


class Data2Vec2Model(Wav2Vec2Model):
    """Student encoder (wav2vec 2.0's, without its quantizer and contrastive heads), EMA teacher
    and decoder."""

    def __init__(self, cfg: ModelConfig, d2v: Data2Vec2Config) -> None:
        super().__init__(cfg)
        check(
            d2v.average_top_k_layers <= cfg.transformer.num_layers,
            "data2vec2.average_top_k_layers",
            f"is {d2v.average_top_k_layers}, more than the {cfg.transformer.num_layers} layers",
        )
        check(
            cfg.transformer.model_dim % d2v.decoder_groups == 0,
            "data2vec2.decoder_groups",
            f"model_dim {cfg.transformer.model_dim} is not divisible by {d2v.decoder_groups}",
        )
        self.d2v = d2v
        # wav2vec 2.0's heads have no part here (and unused parameters would stall DDP).
        self.quantizer = None
        del self.target_proj, self.context_proj
        self.teacher = EMATeacher(self.encoder)
        self.decoder = ConvDecoder(
            cfg.transformer.model_dim,
            decoder_dim=d2v.decoder_dim,
            kernel=d2v.decoder_kernel,
            groups=d2v.decoder_groups,
            num_layers=d2v.decoder_layers,
            input_dropout_prob=d2v.decoder_input_dropout,
        )

    def train(self, mode: bool = True) -> Data2Vec2Model:
        super().train(mode)
        self.teacher.eval()  # the teacher never drops (fairseq: `tm.eval()`)
        return self

    def update_teacher(self, step: int, decay: float) -> None:
        """EMA step for the completed update `step` (a no-op when it is folded in already)."""
        self.teacher.follow(self.encoder, step, decay)

    def forward(  # type: ignore[override]
        self,
        wav: Tensor,
        padding_mask: Tensor | None = None,
        *,
        time_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Data2Vec2Output:
        """Shape: wav (B, S) -> prediction and target (N, D) over the N masked frames of B*M rows.

        `time_mask` (B*M, T) replaces the sampled one (tests)."""
        if self.teacher.updates < 0:
            self.teacher.follow(self.encoder, 0, 1.0)
        front = self.frontend(wav, padding_mask)  # (B, T, C) features, (B, T, D) encoder input
        with torch.no_grad():
            target = teacher_targets(
                self.teacher.encoder,
                front.encoder_input.detach(),
                front.padding_mask,
                self.d2v.average_top_k_layers,
                self.d2v.instance_norm_target_layer,
            )  # (B, T, D)
        clones = self.d2v.num_clones
        pad = front.padding_mask
        cloned = FrontendOutput(
            features=front.features.repeat_interleave(clones, 0),
            encoder_input=front.encoder_input.repeat_interleave(clones, 0),  # (B*M, T, D)
            padding_mask=None if pad is None else pad.repeat_interleave(clones, 0),
            features_penalty=front.features_penalty,
        )
        encoded = self.contextualize(cloned, mask=True, generator=generator, time_mask=time_mask)
        if encoded.time_mask is None:
            raise ValueError("masking.time_prob is 0: data2vec 2.0 needs masked frames")
        time_mask = encoded.time_mask
        prediction = self.decoder(encoded.context)  # (B*M, T, D)
        return Data2Vec2Output(
            prediction=prediction[time_mask],
            target=target.repeat_interleave(clones, 0)[time_mask],
            time_mask=time_mask,
            frame_padding_mask=cloned.padding_mask,
        )


__all__ = [
    "Data2Vec2Config",
    "Data2Vec2Model",
    "Data2Vec2Output",
    "EMATeacher",
    "teacher_targets",
]
