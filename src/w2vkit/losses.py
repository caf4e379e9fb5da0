"""The wav2vec 2.0 objective as fairseq's `wav2vec` criterion computes it (Eq. 2-4, Sec. 3.2).

loss = sum over masked frames of InfoNCE cross-entropy
     + diversity_weight * (G*V - prob_perplexity) / (G*V) * N
     + feature_penalty_weight * mean(z**2) * N
Everything is summed over the N masked frames; the trainer divides by the global sum of N over
ranks and accumulation steps, once per update, which makes the update a per-masked-frame mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from w2vkit.model.wav2vec2 import PretrainOutput


@dataclass
class LossTerms:
    loss: Tensor
    """Summed objective to backpropagate (not yet divided by sample_size)."""
    contrastive: Tensor
    diversity: Tensor
    """Weighted and N-scaled diversity term (fairseq logs it as loss_1)."""
    feature_penalty: Tensor
    """Weighted and N-scaled feature penalty (fairseq loss_2)."""
    sample_size: int
    """N, the masked frames scored."""
    num_correct: int
    num_count: int
    prob_perplexity: float
    code_perplexity: float
    temperature: float

    @property
    def accuracy(self) -> float:
        return self.num_correct / max(self.num_count, 1)


def contrastive_loss(logits: Tensor) -> Tensor:
    """Cross-entropy with the positive at column 0, summed over rows. logits (N, 1+K) -> scalar."""
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), target, reduction="sum")


def diversity_loss(prob_perplexity: Tensor, num_vars: int) -> Tensor:
    """(G*V - perplexity) / (G*V): 0 when every codebook entry is used equally (Eq. 4)."""
    return (num_vars - prob_perplexity) / num_vars


def contrastive_accuracy(logits: Tensor) -> tuple[int, int]:
    """fairseq's count: rows whose argmax is the positive, minus rows where all logits are equal."""
    with torch.no_grad():
        best = logits.argmax(-1) == 0
        # argmax and argmin are both 0 only when every logit in the row ties.
        tied = best & (logits.argmin(-1) == 0)
        return int(best.sum() - tied.sum()), int(best.numel())


def pretraining_loss(
    output: PretrainOutput, *, diversity_weight: float = 0.1, feature_penalty_weight: float = 10.0
) -> LossTerms:
    sample_size = output.logits.shape[0]
    contrastive = contrastive_loss(output.logits)
    zero = contrastive.new_zeros(())
    diversity = zero
    if diversity_weight != 0 and output.prob_perplexity is not None:
        diversity = (
            diversity_weight
            * diversity_loss(output.prob_perplexity.float(), output.num_vars)
            * sample_size
        )
    penalty = zero
    if feature_penalty_weight != 0:
        penalty = feature_penalty_weight * output.features_penalty.float() * sample_size
    num_correct, num_count = contrastive_accuracy(output.logits)
    return LossTerms(
        loss=contrastive + diversity + penalty,
        contrastive=contrastive,
        diversity=diversity,
        feature_penalty=penalty,
        sample_size=sample_size,
        num_correct=num_correct,
        num_count=num_count,
        prob_perplexity=float(output.prob_perplexity.detach())
        if output.prob_perplexity is not None
        else 0.0,
        code_perplexity=float(output.code_perplexity.detach())
        if output.code_perplexity is not None
        else 0.0,
        temperature=output.temperature,
    )
