"""`train.max_minutes`: a wall-clock budget for the update loop, and a plan of updates that follows
the clock.

The clock runs from the loop's start to its end, validation and checkpoints included, and
`state.train_seconds` carries it over resumed sessions. A session's first update is not timed (it
pays for warm-up). After the next CALIBRATION_UPDATES the run makes its plan: with `t` the mean
time of the latest updates, `end = step + floor(seconds left / t)` (at most `train.max_steps`).
Then every REPLAN_INTERVAL updates it measures again (the mean of the latest REPLAN_WINDOW
updates) and re-plans when the end moves by more than REPLAN_TOLERANCE of the updates left: a run
whose first minute shared the machine plans longer once it is alone, one that slows down plans
shorter, and both end within a few percent of the budget. Every rank plans with the mean of the
ranks' measures, at the same updates, so that all stop together.

The plan (`w2vkit.train.state.Plan`) is kept in `state.plan` and in checkpoints (its history and
latest durations), so a resumed run goes on with it. A re-plan re-anchors the schedules at the
current update: they bend there but never jump. Should the time run out before the plan's end
(a sudden slow-down), the update in progress is the last.
"""

from __future__ import annotations

import math
import time

import torch

from w2vkit.train import dist
from w2vkit.train.state import Plan, TrainState

CALIBRATION_UPDATES = 10
"""Updates a time budget times, after a session's first (which pays for warm-up), to plan the run."""
REPLAN_INTERVAL = 5
"""Updates between two measures of the pace, counted from the plan's start (the same on every rank)."""
REPLAN_WINDOW = 10
"""Latest update durations a measure averages."""
REPLAN_TOLERANCE = 0.02
"""A measure moves the plan's end only when it moves by more than this share of the updates left."""
MAX_WARMUP_SHARE = 0.25
"""The LR warm-up takes at most this share of a planned run; a longer one is fitted to it."""

_now = time.monotonic  # the budget's clock (tests replace it)


class TimeBudget:
    """The budget of one session of a run: its clock, the latest update durations, the plan."""

    def __init__(self, state: TrainState, minutes: float, max_steps: int) -> None:
        self.seconds = 60.0 * minutes
        self.max_steps = max_steps
        self.first_step = state.step
        self.recent = list(state.plan.update_seconds) if state.plan is not None else []
        self.last = _now()

    def tick(self, state: TrainState) -> None:
        """After each update: add the time since the last tick to `state.train_seconds`."""
        now = _now()
        seconds, self.last = now - self.last, now
        state.train_seconds += seconds
        if state.step > self.first_step + 1:  # not the session's first update (warm-up)
            self.recent = [*self.recent, seconds][-REPLAN_WINDOW:]
            if state.plan is not None:
                state.plan.update_seconds = list(self.recent)

    def exhausted(self, state: TrainState) -> bool:
        return state.train_seconds >= self.seconds

    def replan(self, state: TrainState, device: torch.device, warmup_steps: int) -> str | None:
        """Make or move the plan when a measure is due and says so; returns what to log then."""
        plan = state.plan
        if plan is None:
            due = state.step == self.first_step + 1 + CALIBRATION_UPDATES
        else:
            due = (state.step - plan.segments[0][0]) % REPLAN_INTERVAL == 0
        if not due or not self.recent:
            return None
        # The ranks' clocks differ a little: plan with their mean, so that all stop together.
        mine = torch.tensor([sum(self.recent) / len(self.recent), state.train_seconds])
        total = dist.all_reduce_sum(mine.to(device=device, dtype=torch.float64))
        per_update, used = (total / dist.world_size()).tolist()
        end = state.step + max(int((self.seconds - used) / max(per_update, 1e-9)), 0)
        end = min(end, self.max_steps) if self.max_steps else end
        if plan is None:
            return self._first_plan(state, end, per_update, warmup_steps)
        if abs(end - plan.end) <= max(1.0, REPLAN_TOLERANCE * (plan.end - state.step)):
            return None
        plan.segments.append((state.step, plan.progress(state.step), end))
        return (
            f"time budget {self.seconds / 60:g} min: {per_update:.3g} s per update now, "
            f"{(self.seconds - used) / 60:.3g} min left, so {end} updates in all (were "
            f"{plan.segments[-2][2]}); the schedules go on from here to end there"
        )

    def _first_plan(self, state: TrainState, end: int, per_update: float, warmup: int) -> str:
        # A warm-up longer than MAX_WARMUP_SHARE of the plan would leave the LR short of its peak
        # for most of the run (or all of it): stretch the schedules so that it fits.
        length = max(end, math.ceil(warmup / MAX_WARMUP_SHARE))
        state.plan = Plan(length, [(state.step, state.step / length, end)], list(self.recent))
        said = (
            f"time budget {self.seconds / 60:g} min: {per_update:.3g} s per update over "
            f"{CALIBRATION_UPDATES} updates, so {end} updates in all; the schedules end there"
        )
        if length > end:
            said += (
                f". optim.warmup_steps={warmup} is more than {MAX_WARMUP_SHARE:.0%} of the plan: "
                f"the schedules are fitted to the plan as if it were {length} updates long, so "
                f"the LR peaks {MAX_WARMUP_SHARE:.0%} of the way through"
            )
        return said


__all__ = [
    "CALIBRATION_UPDATES",
    "MAX_WARMUP_SHARE",
    "REPLAN_INTERVAL",
    "REPLAN_TOLERANCE",
    "REPLAN_WINDOW",
    "TimeBudget",
]
