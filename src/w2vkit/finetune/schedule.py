"""fairseq's `tri_stage` learning-rate schedule: linear warmup, hold, exponential decay, floor.

With `total_steps` updates and phase ratios (w, h, d), fairseq takes int(total * w) warmup,
int(total * h) hold and int(total * d) decay updates. After `step` completed updates the LR is
- warmup (step < W):          init + (peak - init) * step / W, init = init_lr_scale * peak
- hold (step < W + H):        peak
- decay (step <= W + H + D):  peak * exp(ln(final_lr_scale) * (step - W - H) / D)
- after:                      final_lr_scale * peak
(`fairseq/optim/lr_scheduler/tri_stage_lr_scheduler.py`; its first update runs at the initial LR.)
"""

from __future__ import annotations

import math

import torch

from w2vkit.train.optim import StepSchedule


def tri_stage_lr(
    step: int,
    *,
    lr: float,
    total_steps: int,
    phase_ratios: tuple[float, float, float],
    init_lr_scale: float,
    final_lr_scale: float,
) -> float:
    """Learning rate of the update made after `step` completed updates (see the module docstring)."""
    warmup, hold, decay = (int(total_steps * r) for r in phase_ratios)
    if step < warmup:
        init = init_lr_scale * lr
        return init + (lr - init) * step / warmup
    if step < warmup + hold:
        return lr
    if step <= warmup + hold + decay:
        if decay == 0:
            return lr
        return lr * math.exp(math.log(final_lr_scale) * (step - warmup - hold) / decay)
    return final_lr_scale * lr


class TriStageSchedule(StepSchedule):
    """fairseq's `tri_stage` schedule (`tri_stage_lr`)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        lr: float,
        total_steps: int,
        phase_ratios: tuple[float, float, float],
        init_lr_scale: float,
        final_lr_scale: float,
    ) -> None:
        self.optimizer = optimizer
        self.lr = lr
        self.total_steps = total_steps
        self.phase_ratios = phase_ratios
        self.init_lr_scale = init_lr_scale
        self.final_lr_scale = final_lr_scale
        self.set_step(0)

    def lr_at(self, step: int) -> float:
        return tri_stage_lr(
            step,
            lr=self.lr,
            total_steps=self.total_steps,
            phase_ratios=self.phase_ratios,
            init_lr_scale=self.init_lr_scale,
            final_lr_scale=self.final_lr_scale,
        )


__all__ = ["TriStageSchedule", "tri_stage_lr"]
