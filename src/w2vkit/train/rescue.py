"""`train.on_stuck`: what the loop does when the health monitor finds the run stuck.

A stuck run is at chance (`loss_at_chance`) or has a collapsed codebook (`codebook_collapse`),
the two findings that spend a budget on nothing (`w2vkit.train.diagnostics`). `warn` prints the
finding and goes on; `stop` saves and ends the run (stop reason "stuck", exit status 3); `rescue`
rolls the run back to the last healthy checkpoint and lets the objective apply the diagnosed change
(`Objective.rescue`), at most MAX_RESCUES times a run.

The last healthy checkpoint is the newest interval checkpoint (`checkpoint_<epoch>_<step>.pt`) at
or before the update the finding's evidence starts after (`Finding.since`), else the run's initial
state (`INITIAL`, written at update 0 when `on_stuck=rescue`). The rollback restores the weights,
optimizer, schedules, random states and data position of that checkpoint, but not the clock: the
time spent stays spent (`train_seconds`, the budget's plan), and neither do the best validation and
the rescues so far. Each rescue is recorded in `state.rescues` (every later checkpoint holds it); a
resumed run re-applies the recorded changes, oldest first, so it continues exactly.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from w2vkit.train import checkpoint, dist
from w2vkit.train.diagnostics import Finding, Monitor
from w2vkit.train.metrics import MetricsWindow
from w2vkit.train.state import Objective, TrainState

STUCK = ("loss_at_chance", "codebook_collapse")
"""The findings `train.on_stuck` acts on."""
INITIAL = "checkpoint_initial.pt"
"""The state at update 0, the rollback target when no interval checkpoint is old enough."""
MAX_RESCUES = 3
"""Rescues per run; after them a stuck finding only warns."""
STUCK_STATUS = 3
"""Exit status of a run that `on_stuck=stop` ended."""


def watched(objective: Objective, health: Monitor) -> Objective:
    """`objective` with `health` reading every train log line; a rescue starts a fresh copy of
    the monitor (the rolled-back run's evidence starts again) before the objective's change."""
    fresh, current = copy.deepcopy(health), [health]
    change = objective.rescue

    def rescue(finding: str) -> str | None:
        current[0] = copy.deepcopy(fresh)
        return change(finding) if change is not None else None

    return dataclasses.replace(
        objective, monitor=lambda record: current[0].observe(record), rescue=rescue
    )


def prepare(
    state: TrainState, objective: Objective, on_stuck: str, config: dict, out_dir: Path
) -> list[str]:
    """At the loop's start: re-apply the recorded rescues' changes (a resumed run), and under
    `on_stuck=rescue` write `INITIAL` at update 0 (rank 0), the rollback target of an early
    finding. Returns the lines to log."""
    if on_stuck == "rescue" and state.step == 0:
        if dist.is_main():
            window = MetricsWindow()
            payload = checkpoint.payload(state, config, None, window=window)
            checkpoint.save_atomic(payload, out_dir / INITIAL)
        dist.barrier()
    if not state.rescues or objective.rescue is None:
        return []
    changes = [objective.rescue(str(r["finding"])) for r in state.rescues]
    return [f"re-applied {len(changes)} rescue change(s): {'; '.join(map(str, changes))}"]


def healthy_checkpoint(out_dir: Path, since: int) -> Path:
    """The newest interval checkpoint at or before update `since`, else `INITIAL`."""
    found = []
    for path in checkpoint.checkpoints(out_dir):
        step = (
            checkpoint.saved_step(path)
            if path.name not in (checkpoint.LAST, checkpoint.BEST)
            else None
        )
        if step is not None and step <= since:
            found.append((step, path.name, path))
    return max(found)[2] if found else out_dir / INITIAL


def rescue(
    state: TrainState, objective: Objective, finding: Finding, out_dir: Path
) -> tuple[str, bool]:
    """Roll back and apply the change for `finding`: (the line that says what happened, whether
    it rolled back; not when no rescue is left or the objective knows no change for it)."""
    if len(state.rescues) >= MAX_RESCUES or objective.rescue is None:
        return (
            f"rescue: none left for [{finding.code}] at update {finding.step} ({len(state.rescues)} "
            f"of {MAX_RESCUES} used); going on as train.on_stuck=warn would",
            False,
        )
    source = healthy_checkpoint(out_dir, finding.since)
    payload = checkpoint.load(source)
    change = objective.rescue(finding.code)
    if change is None:
        return (
            f"rescue: no change known for [{finding.code}] at update {finding.step}; going on",
            False,
        )
    kept = (state.train_seconds, state.plan, state.best_metric, state.best_rank, state.best_step)
    rescues = state.rescues
    checkpoint.restore(state, payload)
    state.train_seconds, state.plan, state.best_metric, state.best_rank, state.best_step = kept
    state.window = MetricsWindow()  # the rolled-back updates' sums are not logged
    record = {
        "update": finding.step,
        "finding": finding.code,
        "rolled_back_to": state.step,
        "change": change,
    }
    state.rescues = [*rescues, record]
    where = "the initial state" if source.name == INITIAL else source.name
    return (
        f"rescue {len(state.rescues)} of {MAX_RESCUES} at update {finding.step} for "
        f"[{finding.code}]: rolled back to update {state.step} ({where}); changed: {change}"
    ), True


def stop_message(finding: Finding, out_dir: Path) -> str:
    return (
        f"stopping (train.on_stuck=stop): health [{finding.code}] at update {finding.step}; "
        f"{out_dir / checkpoint.LAST} saved. Try: {finding.what_to_try}, or "
        "train.on_stuck=rescue"
    )


__all__ = [
    "INITIAL",
    "MAX_RESCUES",
    "STUCK",
    "STUCK_STATUS",
    "healthy_checkpoint",
    "prepare",
    "rescue",
    "stop_message",
    "watched",
]
