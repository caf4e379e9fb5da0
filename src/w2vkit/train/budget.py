"""`train.max_minutes`: a wall-clock budget for the update loop, and the plan of updates that fits it."""

from __future__ import annotations

import time

import torch

from w2vkit.train import dist
from w2vkit.train.state import TrainState

CALIBRATION_UPDATES = 10
"""Updates a time budget times, after a session's first (which pays for warm-up), to plan the run."""

_now = time.monotonic  # the budget's clock (tests replace it)


class TimeBudget:
    """`train.max_minutes`: a wall-clock budget for the update loop, and the plan that fits it.

    The clock runs from the loop's start to its end, validation and checkpoints included, and
    `state.train_seconds` carries it over resumed sessions. The session's first update is not
    timed (warm-up); the next CALIBRATION_UPDATES are: with their mean time per update `t`, the
    run plans `planned = step + floor(seconds left / t)` updates (at most `train.max_steps`), the
    same on every rank. The plan is kept in `state.planned_steps` (and checkpoints), so a resumed
    run keeps it, and the run ends at `planned` like at max_steps. Should the time run out first
    (slower updates later), the update in progress is the last.
    """

    def __init__(self, state: TrainState, minutes: float, max_steps: int) -> None:
        self.seconds = 60.0 * minutes
        self.max_steps = max_steps
        self.first_step = state.step
        self.timed_from: float | None = None
        self.last = _now()

    def tick(self, state: TrainState) -> None:
        """After each update: add the time since the last tick to `state.train_seconds`."""
        now = _now()
        state.train_seconds += now - self.last
        self.last = now
        if state.step == self.first_step + 1:
            self.timed_from = state.train_seconds

    def exhausted(self, state: TrainState) -> bool:
        return state.train_seconds >= self.seconds

    def plan(self, state: TrainState, device: torch.device) -> tuple[int, float] | None:
        """(planned updates, seconds per update) once the calibration updates are done, else None."""
        if state.planned_steps or self.timed_from is None:
            return None
        if state.step != self.first_step + 1 + CALIBRATION_UPDATES:
            return None
        per_rank = [
            (state.train_seconds - self.timed_from) / CALIBRATION_UPDATES,
            state.train_seconds,
        ]
        # The ranks' clocks differ a little: plan with their mean, so that all stop together.
        mean = dist.all_reduce_sum(torch.tensor(per_rank, dtype=torch.float64, device=device))
        per_update, used = (mean / dist.world_size()).tolist()
        planned = state.step + max(int((self.seconds - used) / max(per_update, 1e-9)), 0)
        return (min(planned, self.max_steps) if self.max_steps else planned), per_update
