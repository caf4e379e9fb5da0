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
from dataclasses import dataclass

import torch
from torch import Tensor, nn

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
        with torch.no_grad() if freeze_encoder else contextlib.nullcontext():
            encoded = self.wav2vec2.encode(
                wav, padding_mask, mask=self.training, generator=generator
            )  # (B, T, D)
        return CTCOutput(self.lm_head(self.final_dropout(encoded.context)), encoded.padding_mask)


__all__ = ["CTCOutput", "Wav2Vec2ForCTC"]
