"""The schedules of pretraining: the learning rate (fairseq's `polynomial_decay` after a linear
warmup) and the Gumbel temperature of the wav2vec 2.0 quantizer, both driven by the number of
completed optimizer updates, so gradient accumulation and resuming do not change them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from w2vkit.model.config import QuantizerConfig
from w2vkit.pretrain.config import OptimConfig
from w2vkit.train.optim import StepSchedule


def gumbel_temperature(step: float, cfg: QuantizerConfig) -> float:
    """Temperature after `step` optimizer updates: max(start * decay**step, end).

    Tied to the optimizer step, not to forward calls, so gradient accumulation does not make it
    decay faster (a fairseq2 pitfall: docs/fairseq_differences.md#fd-temperature-from-step).
    """
    return max(cfg.temperature_start * cfg.temperature_decay**step, cfg.temperature_end)


def polynomial_decay_lr(
    step: float,
    *,
    lr: float,
    warmup_steps: int,
    total_steps: int,
    end_lr: float = 0.0,
    power: float = 1.0,
) -> float:
    """Learning rate of the update made after `step` completed updates (fairseq `step_update(step)`).

    Linear warmup from 0 (`lr * step / warmup_steps` for step <= warmup_steps), then
    `(lr - end_lr) * (1 - (step - warmup) / (total - warmup)) ** power + end_lr`, and `end_lr` from
    `total_steps` on. fairseq calls `step_update(0)` when the epoch begins, so its first update runs
    at LR 0, as here.
    """
    if warmup_steps > 0 and step <= warmup_steps:
        return lr * step / warmup_steps
    if step >= total_steps:
        return end_lr
    remaining = 1.0 - (step - warmup_steps) / (total_steps - warmup_steps)
    return (lr - end_lr) * remaining**power + end_lr


class PolynomialDecaySchedule(StepSchedule):
    """fairseq's `polynomial_decay` after a linear warmup (`polynomial_decay_lr`)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
    ) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.total_steps = total_steps
        self.at: Callable[[int], float] | None = None
        self.set_step(0)

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        return polynomial_decay_lr(
            self.at(step) if self.at is not None else step,
            lr=cfg.lr,
            warmup_steps=cfg.warmup_steps,
            total_steps=self.total_steps,
            end_lr=cfg.end_lr,
            power=cfg.power,
        )

    @property
    def warmup_steps(self) -> int:
        return self.cfg.warmup_steps

    def set_total_steps(self, total_steps: int, at: Callable[[int], float] | None = None) -> None:
        """A new length of the decay, and where on it update k stands (`at(k)`, None: at k): a
        time budget's plan, whose re-plans move `at` without a jump. The current LR follows."""
        self.total_steps, self.at = total_steps, at
        self.set_step(self.step_count)


__all__ = ["PolynomialDecaySchedule", "gumbel_temperature", "polynomial_decay_lr"]
