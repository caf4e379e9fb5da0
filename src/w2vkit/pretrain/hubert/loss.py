"""The HuBERT objective as fairseq's `hubert` criterion computes and logs it.

loss = pred_masked_weight * sum over label sets and masked frames of CE(cosine logits, label)
     + pred_nomask_weight * the same over unmasked frames
     + feature_penalty_weight * mean(z**2) * sample_size
sample_size counts the masked frames (if their weight is non-zero) plus the unmasked ones (if
theirs is), once whatever the number of label sets; the loop divides by its global sum.
Logged: `loss` (bits per scored frame), `loss_m`, `loss_u`, `loss_pen` (same scaling), `accuracy`
and `accuracy_u` (argmax = label, over every label set), `label_ppl` (perplexity of the scored
frames' first label set in the micro-batch: the classes in use; the health check reads it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from w2vkit.pretrain.hubert.config import HubertConfig
from w2vkit.pretrain.hubert.model import HubertOutput
from w2vkit.train.metrics import Value
from w2vkit.train.state import Objective, StepOutput

LOSS_KEYS = ("loss", "loss_m", "loss_u", "loss_pen")
"""Summed losses that `summarize` reports in bits per scored frame."""


@dataclass
class HubertTerms:
    loss: Tensor
    """Summed objective to backpropagate (not yet divided by sample_size)."""
    masked: Tensor
    """Unweighted cross-entropy summed over masked frames and label sets (fairseq loss_m_*)."""
    unmasked: Tensor
    feature_penalty: Tensor
    """Weighted and sample_size-scaled (fairseq loss_features_pen)."""
    sample_size: int
    correct: Tensor
    count: int
    correct_u: Tensor
    count_u: int


def hubert_loss(output: HubertOutput, cfg: HubertConfig) -> HubertTerms:
    zero = output.features_penalty.new_zeros(())
    masked, correct, count = _cross_entropy(output.masked, zero)
    unmasked, correct_u, count_u = _cross_entropy(output.unmasked, zero)
    loss = zero
    sample_size = 0
    # fairseq counts a side's frames once however many label sets score them.
    if cfg.pred_masked_weight > 0:
        loss = loss + cfg.pred_masked_weight * masked
        sample_size += output.masked[0][1].numel()
    if cfg.pred_nomask_weight > 0:
        loss = loss + cfg.pred_nomask_weight * unmasked
        sample_size += output.unmasked[0][1].numel()
    penalty = cfg.feature_penalty_weight * output.features_penalty.float() * sample_size
    return HubertTerms(
        loss=loss + penalty,
        masked=masked,
        unmasked=unmasked,
        feature_penalty=penalty,
        sample_size=sample_size,
        correct=correct,
        count=count,
        correct_u=correct_u,
        count_u=count_u,
    )


def _cross_entropy(scored: list[tuple[Tensor, Tensor]], zero: Tensor) -> tuple[Tensor, Tensor, int]:
    """(summed CE, correct, count) over every label set's (logits (N, K), labels (N,))."""
    total, correct, count = zero, zero.long(), 0
    for logits, labels in scored:
        total = total + F.cross_entropy(logits, labels, reduction="sum")
        with torch.no_grad():
            correct = correct + (logits.argmax(-1) == labels).sum()
        count += labels.numel()
    return total, correct, count


def label_perplexity(labels: Tensor, num_classes: int) -> Tensor:
    """exp(entropy) of the label histogram: K when all K classes are equally frequent, 1 when one
    class holds every frame. labels (N,) -> 0-dim fp32."""
    counts = torch.bincount(labels.reshape(-1), minlength=num_classes).float()
    p = counts / counts.sum().clamp(min=1.0)
    return torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """fairseq's hubert `reduce_metrics`: losses in bits per scored frame, accuracies per side."""
    sample_size = max(sums.get("sample_size", 0.0), 1.0)
    out = {key: sums[key] / sample_size / math.log(2) for key in LOSS_KEYS if key in sums}
    if sums.get("count"):
        out["accuracy"] = sums["correct"] / sums["count"]
    if sums.get("count_u"):
        out["accuracy_u"] = sums["correct_u"] / sums["count_u"]
    out["sample_size"] = sums.get("sample_size", 0.0)
    return out


def hubert_objective(cfg: HubertConfig) -> Objective[Any]:
    """The training loop's Objective for HuBERT (validation: the same step, fixed seed).

    The batch carries `labels`, one (B, L_i) tensor per label set, cropped with the audio.
    """

    def hubert_step(
        model: nn.Module, batch: Any, step: int, generator: torch.Generator
    ) -> StepOutput:
        output = model(batch.wav, batch.padding_mask, batch.labels, generator=generator)
        terms = hubert_loss(output, cfg)
        sums: dict[str, Value] = {
            "loss_m": terms.masked.detach(),
            "correct": terms.correct,
            "count": terms.count,
        }
        if cfg.pred_nomask_weight > 0:
            sums.update(
                loss_u=terms.unmasked.detach(), correct_u=terms.correct_u, count_u=terms.count_u
            )
        if cfg.feature_penalty_weight > 0:
            sums["loss_pen"] = terms.feature_penalty.detach()
        scored = output.masked or output.unmasked
        means: dict[str, Value] = {
            "label_ppl": label_perplexity(scored[0][1], cfg.num_classes[0]),
        }
        return StepOutput(loss=terms.loss, sample_size=terms.sample_size, sums=sums, means=means)

    return Objective(step=hubert_step, summarize=summarize)


__all__ = [
    "LOSS_KEYS",
    "HubertTerms",
    "hubert_loss",
    "hubert_objective",
    "label_perplexity",
    "summarize",
]
