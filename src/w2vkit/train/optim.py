"""Adam(W) and fairseq's `polynomial_decay` learning-rate schedule.

fairseq's `adam` applies decoupled weight decay (AdamW) to every parameter, biases and norms
included (`fairseq/optim/adam.py`); `torch.optim.AdamW` over all parameters is the same update.
"""

from __future__ import annotations

import torch
from torch import nn

from w2vkit.train.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (fairseq `adam`) or Adam with L2, over all trainable parameters, LR set by the schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(
        params,
        lr=cfg.lr,
        betas=(cfg.betas[0], cfg.betas[1]),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
    )


def polynomial_decay_lr(
    step: int,
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


class PolynomialDecaySchedule:
    """Sets the optimizer's LR from the number of completed updates; its state is that number."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
    ) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.total_steps = total_steps
        self.step_count = 0
        self.set_step(0)

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        return polynomial_decay_lr(
            step,
            lr=cfg.lr,
            warmup_steps=cfg.warmup_steps,
            total_steps=self.total_steps,
            end_lr=cfg.end_lr,
            power=cfg.power,
        )

    def set_total_steps(self, total_steps: int) -> None:
        """A new length of the decay (a time budget's plan); the LR of the current step follows."""
        self.total_steps = total_steps
        self.set_step(self.step_count)

    def set_step(self, step: int) -> float:
        """Call after each optimizer update with the number of completed updates."""
        self.step_count = step
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"step": self.step_count, "lr": self.lr_at(self.step_count)}

    def load_state_dict(self, state: dict) -> None:
        self.set_step(int(state["step"]))


__all__ = ["PolynomialDecaySchedule", "build_optimizer", "polynomial_decay_lr"]
