"""Exponential moving average of a module's weights: data2vec 2.0's teacher (arXiv:2212.07525).

After update k the teacher moves towards the student, `t <- d_k * t + (1 - d_k) * s` for every
parameter, with `d_k` rising linearly from `start` to `end` over the first `anneal_steps` updates
and `end` afterwards (fairseq `get_annealed_rate`). Buffers are copied, not averaged: they are
counters and statistics, not weights.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_decay_at(step: float, *, start: float, end: float, anneal_steps: int) -> float:
    """Decay applied after update `step`: `end - (end - start) * (1 - step / anneal_steps)`.

    `step` may be fractional: a time budget's plan maps the run's updates onto the schedule."""
    if step >= anneal_steps:
        return end
    return end - (end - start) * (1.0 - step / anneal_steps)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """Move `teacher` (same structure as `student`) towards it in place, in the teacher's dtype."""
    teacher_params = dict(teacher.named_parameters())
    for name, param in student.named_parameters():
        target = teacher_params[name]
        target.mul_(decay).add_(param.detach().to(target.dtype), alpha=1.0 - decay)
    teacher_buffers = dict(teacher.named_buffers())
    for name, buffer in student.named_buffers():
        teacher_buffers[name].copy_(buffer)


__all__ = ["ema_decay_at", "ema_update_"]
