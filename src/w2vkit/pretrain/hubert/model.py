"""HuBERT (Hsu et al., 2021, arXiv:2106.07447): wav2vec 2.0's encoder predicting frame labels.

raw audio -> conv features Z -> (mask) -> Transformer context C -> projection P(C)
          -> cosine similarity to one learned embedding per class / logit temperature
          -> cross-entropy against the frame's label (k-means cluster of MFCCs or of a model layer)

The encoder stages are `Wav2Vec2Model`'s, with the same parameter names, so `extract`, `probe` and
fine-tuning read a HuBERT encoder as they read a wav2vec 2.0 one; there is no quantizer. fairseq's
`final_proj` is `context_proj` here and its `label_embs_concat` is `label_embeddings`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from w2vkit.data.audio import SAMPLE_RATE
from w2vkit.model.config import ModelConfig
from w2vkit.model.feature_extractor import frame_geometry, output_lengths
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.pretrain.hubert.config import HubertConfig


@dataclass
class HubertOutput:
    masked: list[tuple[Tensor, Tensor]]
    """Per label set: logits (N_m, K_i) fp32 and labels (N_m,) of the masked frames, row-major
    (b, t) order; empty when `pred_masked_weight` is 0."""
    unmasked: list[tuple[Tensor, Tensor]]
    """The same over the unmasked frames; empty when `pred_nomask_weight` is 0."""
    time_mask: Tensor
    """(B, T) True = masked, over the frames that have labels."""
    frame_padding_mask: Tensor | None
    features_penalty: Tensor
    """Mean squared conv feature over unpadded frames (fp32 scalar)."""


class HubertModel(Wav2Vec2Model):
    """The wav2vec 2.0 encoder with HuBERT's prediction head: `context_proj` (one slice of
    `final_dim` per label set when untied) and `label_embeddings` (sum of classes, final_dim)."""

    def __init__(
        self,
        cfg: ModelConfig,
        hubert: HubertConfig,
        *,
        label_rate: float,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        # The shared stages, built without a quantizer: HuBERT's targets come from the labels.
        encoder_cfg = replace(
            cfg, quantizer=replace(cfg.quantizer, quantize_targets=False), num_codebook_negatives=0
        )
        super().__init__(encoder_cfg)
        del self.target_proj  # wav2vec 2.0's target projection has no counterpart here
        self.hubert = hubert
        _, stride = frame_geometry(cfg.feature_extractor.conv_layers)
        # Labels per encoder frame (fairseq `feat2tar_ratio`): 2 for 100 Hz labels, 1 for 50 Hz.
        self.frames_per_label = label_rate * stride / sample_rate
        heads = len(hubert.num_classes) if hubert.untie_final_proj else 1
        self.context_proj = nn.Linear(cfg.transformer.model_dim, cfg.final_dim * heads)
        # U[0, 1) as fairseq initialises `label_embs_concat`.
        self.label_embeddings = nn.Parameter(
            torch.empty(sum(hubert.num_classes), cfg.final_dim).uniform_()
        )

    def forward(  # type: ignore[override]  # labels in, class logits out: not wav2vec 2.0's call
        self,
        wav: Tensor,
        padding_mask: Tensor | None,
        labels: list[Tensor],
        *,
        time_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> HubertOutput:
        """Shape: wav (B, S), labels one (B, L_i) long tensor per label set -> HubertOutput.

        Frames without a label (the labels end first) are dropped after the conv features, as
        fairseq does. `time_mask` (B, T) replaces the sampled one (parity tests).
        """
        if len(labels) != len(self.hubert.num_classes):
            raise ValueError(
                f"expected {len(self.hubert.num_classes)} label sets, got {len(labels)}"
            )
        ratio = self.frames_per_label
        conv_layers = self.cfg.feature_extractor.conv_layers
        frames = int(output_lengths(torch.tensor(wav.shape[-1]), conv_layers))
        num_labels = min(t.shape[1] for t in labels)
        if ratio * frames > num_labels:
            frames = int(num_labels / ratio)
        # 1. Conv features of the labelled frames and their penalty; 2. the masked encoder input
        # through the Transformer.
        if time_mask is None and self.masker.cfg.time_prob == 0:
            raise ValueError("masking.time_prob is 0: HuBERT needs masked frames")
        front = self.frontend(wav, padding_mask, num_frames=frames)
        encoded = self.contextualize(front, mask=True, generator=generator, time_mask=time_mask)
        context, frame_pad = encoded.context, front.padding_mask  # (B, T, D), (B, T)
        time_mask = encoded.time_mask
        assert time_mask is not None  # time_prob > 0 or given: checked above
        frames = context.shape[1]
        # 3. The label of each frame: label int(t * ratio) of the (cropped) label sequence.
        index = (torch.arange(frames, device=wav.device, dtype=torch.float32) * ratio).long()
        targets = [t[:, index] for t in labels]  # (B, T) each
        valid = torch.ones_like(time_mask) if frame_pad is None else ~frame_pad
        masked = unmasked = []
        if self.hubert.pred_masked_weight > 0:
            masked = self._predict(context, targets, time_mask & valid)
        if self.hubert.pred_nomask_weight > 0:
            unmasked = self._predict(context, targets, ~time_mask & valid)
        return HubertOutput(
            masked=masked,
            unmasked=unmasked,
            time_mask=time_mask,
            frame_padding_mask=frame_pad,
            features_penalty=front.features_penalty,
        )

    def _predict(
        self, context: Tensor, targets: list[Tensor], frames: Tensor
    ) -> list[tuple[Tensor, Tensor]]:
        """(logits (N, K_i), labels (N,)) per label set over the N frames selected by `frames`."""
        projected = self.context_proj(context[frames])  # (N, D) -> (N, F * heads)
        heads = projected.chunk(len(targets), -1) if self.hubert.untie_final_proj else None
        embeddings = self.label_embeddings.split(self.hubert.num_classes, 0)  # (K_i, F) each
        out = []
        for i, (target, classes) in enumerate(zip(targets, embeddings, strict=True)):
            head = projected if heads is None else heads[i]  # (N, F)
            # Cosine similarity to every class in fp32, as fairseq scores its positive against
            # all classes (the positive's own column is the same number).
            logits = (
                F.normalize(head.float(), dim=-1, eps=1e-8)
                @ F.normalize(classes.float(), dim=-1, eps=1e-8).T
            )  # (N, K_i)
            out.append((logits / self.cfg.logit_temperature, target[frames]))
        return out


__all__ = ["HubertModel", "HubertOutput"]
