"""The data2vec 2.0 objective for the training loop: teacher EMA step, regression loss, logs.

loss = sum over the N masked frames (of every clone) of scale * ||prediction - target||^2, with
scale 1/sqrt(D) by default (fairseq `d2v_loss`); the loop divides by the global N once per update.
Logged: `loss` (per masked frame), `target_var` and `pred_var` (fairseq `compute_var`: the mean
over dimensions of the standard deviation across masked frames; the teacher collapsing to a
constant shows as `target_var` -> 0), `ema_decay` (the decay of the last teacher step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from w2vkit.data.collate import Batch
from w2vkit.model.data2vec2 import Data2Vec2Config, Data2Vec2Model
from w2vkit.model.ema import ema_decay_at
from w2vkit.pretrain.config import PretrainConfig
from w2vkit.pretrain.health import Data2Vec2Monitor
from w2vkit.pretrain.objective import PretrainObjective
from w2vkit.train import dist
from w2vkit.train.metrics import LOOP_COLUMNS, Column, Value
from w2vkit.train.state import Objective, StepOutput


def regression_loss(prediction: Tensor, target: Tensor, scale: float = 0.0) -> Tensor:
    """Summed `scale * (prediction - target)^2`; scale 0 means 1/sqrt(D). (N, D), (N, D) -> scalar."""
    scale = scale or 1.0 / math.sqrt(prediction.shape[-1])
    return (prediction.float() - target.float()).pow(2).sum() * scale


def spread(x: Tensor) -> Tensor:
    """Mean over dimensions of the standard deviation across rows (fairseq `compute_var`).

    (N, D) -> 0-dim fp32; 0 for fewer than two rows."""
    if x.shape[0] < 2:
        return x.new_zeros((), dtype=torch.float32)
    return torch.sqrt(x.float().var(0) + 1e-6).mean()


def summarize(sums: dict[str, float]) -> dict[str, float]:
    sample_size = max(sums.get("sample_size", 0.0), 1.0)
    return {
        "loss": sums.get("loss", 0.0) / sample_size,
        "sample_size": sums.get("sample_size", 0.0),
    }


def data2vec2_objective(cfg: Data2Vec2Config, *, nominal_steps: int = 0) -> Objective[Batch]:
    """The training loop's Objective for data2vec 2.0 (validation: the same step, no EMA step).

    A time budget's plan fits the EMA anneal to it: after update k the decay is that of update
    `progress(k) * nominal_steps` of the configured schedule (`progress`: the plan's share of the
    run done), so the anneal ends at the same fraction of the run as `ema_anneal_end_step` of
    `nominal_steps` (the config's LR schedule length), and follows a re-plan without a jump.
    """
    progress: Callable[[int], float] | None = None

    def plan(run_progress: Callable[[int], float]) -> None:
        nonlocal progress
        progress = run_progress if nominal_steps > 0 else None

    def decay_at(step: int) -> float:
        at = progress(step) * nominal_steps if progress is not None else step
        return ema_decay_at(
            at, start=cfg.ema_decay, end=cfg.ema_end_decay, anneal_steps=cfg.ema_anneal_end_step
        )

    def data2vec2_step(
        model: nn.Module, batch: Batch, step: int, generator: torch.Generator
    ) -> StepOutput:
        inner = dist.unwrap(model)
        assert isinstance(inner, Data2Vec2Model)  # the recipe builds it for this objective
        decay = decay_at(step)
        if inner.training:
            # The EMA step of update `step` (fairseq: after the optimizer step); the teacher
            # counts the updates it followed, so accumulation and resuming step it once.
            inner.update_teacher(step, decay)
        output = model(batch.wav, batch.padding_mask, generator=generator)
        loss = regression_loss(output.prediction, output.target, cfg.loss_scale)
        means: dict[str, Value] = {
            "target_var": spread(output.target.detach()),
            "pred_var": spread(output.prediction.detach()),
            "ema_decay": decay,
        }
        return StepOutput(loss=loss, sample_size=output.prediction.shape[0], sums={}, means=means)

    return Objective(step=data2vec2_step, summarize=summarize, plan=plan)


@dataclass(kw_only=True)
class Data2Vec2PretrainConfig(PretrainConfig):
    """A data2vec 2.0 pretraining run (`objective: data2vec2`)."""

    data2vec2: Data2Vec2Config = field(default_factory=Data2Vec2Config)


DATA2VEC2 = PretrainObjective(
    name="data2vec2",
    config=Data2Vec2PretrainConfig,
    new_model=lambda cfg: Data2Vec2Model(cfg.model, cfg.data2vec2),
    objective=lambda cfg: data2vec2_objective(cfg.data2vec2, nominal_steps=cfg.total_steps),
    columns=(
        Column("loss", "loss", ".4f"),
        Column("target_var", "target_var", ".3f"),
        Column("pred_var", "pred_var", ".3f"),
        Column("ema_decay", "ema_decay", ".5f"),
        *LOOP_COLUMNS,
    ),
    health=lambda config: Data2Vec2Monitor(),
    best="valid loss  {:.4f} per masked frame",
)
"""The registry entry: the teacher and decoder live in the model, so the device, DDP,
checkpoints and exact resume take them along."""

__all__ = [
    "DATA2VEC2",
    "Data2Vec2PretrainConfig",
    "data2vec2_objective",
    "regression_loss",
    "spread",
    "summarize",
]
