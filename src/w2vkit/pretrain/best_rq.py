"""The BEST-RQ objective for the training loop: cross-entropy against the frozen quantizer's codes.

loss = sum over the N masked frames of the mean over the C codebooks of the cross-entropy; the
loop divides by the global N once per update. Logged: `loss` (nats per masked frame), `accuracy`
(over frames and codebooks), `code_perplexity` (exp of the entropy of the target codes at the
masked frames, mean over codebooks: how many codes are in use) and `top_code_frac` (the most
frequent code's share, also the accuracy of always guessing it: the chance level).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from w2vkit.data.collate import Batch
from w2vkit.model.best_rq import BestRQConfig, BestRQModel
from w2vkit.pretrain.config import PretrainConfig
from w2vkit.pretrain.health import BestRQMonitor
from w2vkit.pretrain.objective import PretrainObjective
from w2vkit.train.metrics import LOOP_COLUMNS, Column, Value
from w2vkit.train.state import Objective, StepOutput


def best_rq_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Summed over frames, mean over codebooks. logits (N, C, V), targets (N, C) -> scalar."""
    num_codebooks, size = logits.shape[1], logits.shape[2]
    total = F.cross_entropy(logits.float().reshape(-1, size), targets.reshape(-1), reduction="sum")
    return total / num_codebooks


def code_usage(targets: Tensor, codebook_size: int) -> tuple[Tensor, Tensor]:
    """(perplexity, top share) of the codes, each a mean over codebooks. targets (N, C) -> 0-dim."""
    num, codebooks = targets.shape
    counts = torch.zeros(codebooks, codebook_size, device=targets.device)
    counts.scatter_add_(1, targets.t(), torch.ones(codebooks, num, device=targets.device))
    probs = counts / max(num, 1)  # (C, V)
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum(1)  # (C,)
    return entropy.exp().mean(), probs.max(1).values.mean()


def summarize(sums: dict[str, float]) -> dict[str, float]:
    sample_size = max(sums.get("sample_size", 0.0), 1.0)
    out = {"loss": sums.get("loss", 0.0) / sample_size}
    if sums.get("count"):
        out["accuracy"] = sums["correct"] / sums["count"]
    out["sample_size"] = sums.get("sample_size", 0.0)
    return out


def best_rq_objective() -> Objective[Batch]:
    """The training loop's Objective for BEST-RQ (validation: the same step)."""

    def best_rq_step(
        model: nn.Module, batch: Batch, step: int, generator: torch.Generator
    ) -> StepOutput:
        output = model(batch.wav, batch.padding_mask, generator=generator)
        loss = best_rq_loss(output.logits, output.targets)
        with torch.no_grad():
            correct = (output.logits.argmax(-1) == output.targets).sum()
            perplexity, top = code_usage(output.targets, output.logits.shape[-1])
        sums: dict[str, Value] = {"correct": correct, "count": output.targets.numel()}
        means: dict[str, Value] = {"code_perplexity": perplexity, "top_code_frac": top}
        return StepOutput(loss=loss, sample_size=output.targets.shape[0], sums=sums, means=means)

    return Objective(step=best_rq_step, summarize=summarize)


@dataclass(kw_only=True)
class BestRQPretrainConfig(PretrainConfig):
    """A BEST-RQ pretraining run (`objective: best_rq`)."""

    best_rq: BestRQConfig = field(default_factory=BestRQConfig)


BEST_RQ = PretrainObjective(
    name="best_rq",
    config=BestRQPretrainConfig,
    new_model=lambda cfg: BestRQModel(cfg.model, cfg.best_rq),
    objective=lambda cfg: best_rq_objective(),
    columns=(
        Column("loss", "loss", ".3f"),
        Column("accuracy", "accuracy", ".3f"),
        Column("code_perplexity", "code_ppl", ".1f"),
        Column("top_code_frac", "top_code", ".3f"),
        *LOOP_COLUMNS,
    ),
    health=lambda config: BestRQMonitor(),
    best="valid loss  {:.4f} nats",
)
"""The registry entry: the frozen quantizer is buffers of the model, saved with it."""

__all__ = [
    "BEST_RQ",
    "BestRQPretrainConfig",
    "best_rq_loss",
    "best_rq_objective",
    "code_usage",
    "summarize",
]
