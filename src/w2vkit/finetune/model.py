"""`Wav2Vec2ForCTC`: a wav2vec 2.0 encoder, final dropout and a linear layer over the vocabulary.

fairseq's `Wav2VecCtc` / HF's `Wav2Vec2ForCTC`: the pretraining heads (quantizer, projections) are
dropped; the encoder input is span-masked in time and channels while training (fairseq
`apply_mask`, same sampling as pretraining, with the fine-tuning probabilities); the feature
extractor is frozen when its `grad_scale` is 0; `freeze_encoder=True` runs the whole encoder
without autograd, so that only the output layer trains (fairseq `freeze_finetune_updates`).

Parameter names are those of `Wav2Vec2Model` under `wav2vec2.`, plus `lm_head.{weight,bias}`:
HF's layout of the same model.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from w2vkit.config import ConfigError, from_dict
from w2vkit.finetune.vocab import Vocabulary
from w2vkit.interop.native import PRETRAINING_HEADS, Pretrained
from w2vkit.model.config import ModelConfig
from w2vkit.model.dropout import Dropout
from w2vkit.model.wav2vec2 import Wav2Vec2Model


@dataclass
class CTCOutput:
    logits: Tensor
    """(B, T, V) unnormalised scores per frame."""
    frame_padding_mask: Tensor | None
    """(B, T) True = padded."""

    @property
    def lengths(self) -> Tensor:
        """(B,) frames of real audio per row."""
        batch, frames, _ = self.logits.shape
        if self.frame_padding_mask is None:
            return torch.full((batch,), frames, dtype=torch.long, device=self.logits.device)
        return (~self.frame_padding_mask).sum(1)


class Wav2Vec2ForCTC(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, *, final_dropout_prob: float = 0.0):
        super().__init__()
        self.cfg = cfg
        self.wav2vec2 = Wav2Vec2Model(cfg)
        for head in ("quantizer", "target_proj", "context_proj"):
            setattr(self.wav2vec2, head, None)  # pretraining heads: not part of the CTC model
        if cfg.feature_extractor.grad_scale == 0:
            self.wav2vec2.feature_extractor.requires_grad_(False)  # never updated
        self.final_dropout = Dropout(final_dropout_prob)
        self.lm_head = nn.Linear(cfg.transformer.model_dim, vocab_size)
        nn.init.xavier_uniform_(self.lm_head.weight)  # as fairseq's Wav2VecEncoder.proj
        nn.init.zeros_(self.lm_head.bias)

    def forward(
        self,
        wav: Tensor,
        padding_mask: Tensor | None = None,
        *,
        freeze_encoder: bool = False,
        generator: torch.Generator | None = None,
    ) -> CTCOutput:
        """Shape: wav (B, S), padding_mask (B, S) -> logits (B, T, V). Masks only in train mode."""
        w2v = self.wav2vec2
        with torch.no_grad() if freeze_encoder else contextlib.nullcontext():
            features, frame_pad, _ = w2v._features(wav, padding_mask)  # (B, T, C)
            x = w2v.input_dropout(w2v._project(features))  # (B, T, D)
            if self.training:
                batch, frames, dim = x.shape
                time_mask = w2v.masker.time_mask(batch, frames, frame_pad, generator, wav.device)
                channel_mask = w2v.masker.channel_mask(batch, dim, generator, wav.device)
                x = w2v.masker(x, time_mask, channel_mask)
            context = w2v.encoder(x, frame_pad, generator=generator)[-1]  # (B, T, D)
        return CTCOutput(self.lm_head(self.final_dropout(context)), frame_pad)

    def load_encoder(self, state: dict[str, Tensor], *, source: str) -> None:
        """Load a pretrained `Wav2Vec2Model` state dict (its heads are ignored) into the encoder.

        A source that never masked (an HF encoder without `masked_spec_embed`) keeps the fresh
        mask embedding; any other missing or unknown tensor is an error naming it.
        """
        state = {k: v for k, v in state.items() if not k.startswith(PRETRAINING_HEADS)}
        missing, unexpected = self.wav2vec2.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "masker.mask_embedding"]
        if missing or unexpected:
            raise ConfigError(
                f"{source}: encoder weights do not fit: missing {missing[:4]}, "
                f"unexpected {unexpected[:4]}"
            )


@dataclass
class FineTuned:
    """A fine-tuned CTC model read from a w2vkit checkpoint or an HF Wav2Vec2ForCTC directory."""

    cfg: ModelConfig
    vocab: Vocabulary
    state_dict: dict[str, Tensor]
    """`Wav2Vec2ForCTC` keys."""
    normalize: bool = False
    final_dropout_prob: float = 0.0

    def build(self) -> Wav2Vec2ForCTC:
        model = Wav2Vec2ForCTC(
            self.cfg, len(self.vocab), final_dropout_prob=self.final_dropout_prob
        )
        model.load_state_dict(self.state_dict)
        return model


def read_encoder(source: str | os.PathLike) -> Pretrained:
    """A pretrained encoder from any format (the one place that names the interop reader)."""
    from w2vkit.interop import read_pretrained

    return read_pretrained(Path(source))


def is_finetuned(payload: object) -> bool:
    """A w2vkit fine-tuning checkpoint: its config has a `vocab` and its model an `lm_head`."""
    return (
        isinstance(payload, dict)
        and isinstance(payload.get("config"), dict)
        and isinstance(payload["config"].get("vocab"), list)
        and isinstance(payload.get("model"), dict)
        and "lm_head.weight" in payload["model"]
    )


def read_finetuned(
    source: str | os.PathLike, dict_path: str | os.PathLike | None = None
) -> FineTuned:
    """A w2vkit fine-tuning checkpoint (`.pt`), an HF `Wav2Vec2ForCTC` directory, or a fairseq
    `wav2vec_ctc` checkpoint with its `dict.ltr.txt` (`dict_path`, default: beside the file)."""
    from w2vkit.finetune import fairseq
    from w2vkit.interop import hf, refuse_run_directory
    from w2vkit.interop.safe_load import load_torch_file

    path = Path(source)
    if path.is_dir():
        refuse_run_directory(path)
        return hf.load_hf_ctc(path)
    payload = load_torch_file(path)
    if fairseq.is_fairseq_ctc(payload):
        dict_path = Path(dict_path) if dict_path else path.with_name("dict.ltr.txt")
        if not dict_path.is_file():
            raise ConfigError(
                f"{path} is a fairseq fine-tuned model, which does not store its dictionary: "
                f"pass its dict.ltr.txt (--dict), {dict_path} does not exist"
            )
        return fairseq.from_fairseq_ctc(payload, Vocabulary.load(dict_path), source=str(path))
    if not is_finetuned(payload):
        raise ConfigError(
            f"{path}: not a fine-tuned CTC model (a w2vkit finetune checkpoint or an HF "
            "Wav2Vec2ForCTC directory); fine-tune it first with w2vkit finetune"
        )
    config = payload["config"]
    cfg = from_dict(ModelConfig, config["model"], where="model")
    normalize = bool(config.get("data", {}).get("normalize", False))
    return FineTuned(
        cfg=cfg,
        vocab=Vocabulary(config["vocab"][4:]),
        state_dict=payload["model"],
        normalize=normalize,
        final_dropout_prob=float(config.get("ctc", {}).get("final_dropout_prob", 0.0)),
    )


__all__ = [
    "CTCOutput",
    "FineTuned",
    "Wav2Vec2ForCTC",
    "is_finetuned",
    "read_encoder",
    "read_finetuned",
]
