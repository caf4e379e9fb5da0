"""Run health: named findings from the training log records, with the likely cause and what to try.

`Monitor.observe(record)` takes each logged record (the dicts `RunLogger.log` writes to
train_log.jsonl; validation records are ignored) and returns the findings that became true with
it. A finding is reported once, when its condition starts, and again only after the condition
has cleared. `Monitor` holds the signatures every objective shares (gradient norm, non-finite
updates, data wait); an objective's monitor subclasses it with its own (wav2vec 2.0:
`w2vkit.pretrain.wav2vec2_health`). Thresholds are keyword arguments; docs/diagnostics.md
explains each.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

DATA_WAIT_KEY = "data_wait_frac"
"""Logged fraction of wall time per update spent waiting for the next batch (if logged)."""


@dataclass(frozen=True)
class Finding:
    code: str
    """Stable identifier, e.g. `loss_at_chance`."""
    message: str
    """What was seen, with the numbers."""
    likely_cause: str
    what_to_try: str
    step: int
    """`num_updates` of the record that raised it."""
    since: int = 0
    """The update its evidence starts after (`Monitor.since`); a rescue (`train.on_stuck`) rolls
    back to a checkpoint no newer than it."""

    def format(self) -> str:
        return (
            f"health [{self.code}] at update {self.step}: {self.message}\n"
            f"  likely cause: {self.likely_cause}\n  try: {self.what_to_try}"
        )


SHARED_ADVICE: dict[str, tuple[str, str]] = {
    "zero_gradient": (
        "no gradient reaches the weights: everything is frozen, the loss does not depend on "
        "the parameters, or the learning rate schedule is at 0",
        "check optim.lr and the schedule, model.feature_extractor.grad_scale, and that the "
        "loss is not detached",
    ),
    "exploding_gradient": (
        "the gradient norm jumped: the learning rate is too high for this batch size, or fp16 "
        "overflow in attention",
        "lower optim.lr or lengthen optim.warmup_steps; set optim.clip_norm (e.g. 10); try "
        "train.precision=bf16 or fp32",
    ),
    "nonfinite_streak": (
        "updates keep producing NaN/inf: fp16 overflow, a too-high learning rate, or a broken "
        "file (all-zero audio normalised to NaN)",
        "train.precision=bf16/fp32, lower optim.lr, optim.clip_norm > 0; check the data for "
        "silent or corrupt files",
    ),
    "data_bottleneck": (
        "the data pipeline is the bottleneck: decoding and resampling keep the model waiting",
        "raise data.num_workers; store audio as 16 kHz FLAC/WAV (no resampling); put the data "
        "on a local disk",
    ),
    "ended_in_warmup": (
        "the run ended while its learning rate was still rising: the warm-up never finished, so "
        "the LR never reached optim.lr (a budget or max_steps shorter than the warm-up)",
        "train longer (train.max_minutes, train.max_steps) or lower optim.warmup_steps",
    ),
}
"""(likely cause, what to try) of the signatures every objective shares."""


class Monitor:
    """Watches training records; `observe` returns the new findings. Subclasses add their
    signatures in `conditions` (before these) and their (cause, remedy) in `ADVICE`."""

    ADVICE: ClassVar[dict[str, tuple[str, str]]] = SHARED_ADVICE

    def __init__(
        self,
        *,
        zero_gnorm: float = 1e-8,
        zero_gnorm_records: int = 3,
        explode_factor: float = 20.0,
        explode_history: int = 20,
        nonfinite_window: int = 5,
        nonfinite_limit: int = 3,
        data_wait_limit: float = 0.3,
        data_wait_records: int = 3,
    ) -> None:
        self.zero_gnorm = zero_gnorm
        self.zero_gnorm_records = zero_gnorm_records
        self.explode_factor = explode_factor
        self.nonfinite_window = nonfinite_window
        self.nonfinite_limit = nonfinite_limit
        self.data_wait_limit = data_wait_limit
        self.data_wait_records = data_wait_records
        self._active: set[str] = set()
        self._streaks: dict[str, int] = {}
        self._streak_start: dict[str, int] = {}
        """The update before each streak's first record (its evidence starts after it)."""
        self._step = 0
        self._gnorms: deque[float] = deque(maxlen=explode_history)
        self._nonfinite: deque[int] = deque(maxlen=nonfinite_window + 1)
        self._lrs: deque[float] = deque(maxlen=2)

    def observe(self, record: dict) -> list[Finding]:
        """New findings for one log record (validation records: none)."""
        if record.get("split", "train") != "train":
            return []
        step = self._step = int(record.get("num_updates", 0))
        if isinstance(record.get("lr"), (int, float)):
            self._lrs.append(float(record["lr"]))
        findings = []
        for code, message in self.conditions(record, step).items():
            if message is None:
                self._active.discard(code)
            elif code not in self._active:
                self._active.add(code)
                cause, remedy = self.ADVICE[code]
                findings.append(Finding(code, message, cause, remedy, step, self.since(code, step)))
        return findings

    def finish(self) -> list[Finding]:
        """Findings about how the run ended, once its last record was observed (a replayed log,
        the report): what no windowed signature could see in a run shorter than its window.
        `ended_in_warmup`: the LR of the last two train records still rising."""
        if len(self._lrs) < 2 or not self._lrs[1] > self._lrs[0]:
            return []
        cause, remedy = self.ADVICE["ended_in_warmup"]
        message = (
            f"the run ended at update {self._step} with its learning rate still rising "
            f"({self._lrs[0]:.3g} -> {self._lrs[1]:.3g} over its last two log records)"
        )
        return [Finding("ended_in_warmup", message, cause, remedy, self._step, self._step)]

    def since(self, code: str, step: int) -> int:
        """The update after which the evidence of finding `code` raised at `step` starts (a
        subclass with windowed or sustained signatures says where theirs start)."""
        return step

    def conditions(self, record: dict, step: int) -> dict[str, str | None]:
        """Each signature's code and what it saw in `record` (None: not present)."""
        return {
            "zero_gradient": self._zero_gradient(record),
            "exploding_gradient": self._exploding(record),
            "nonfinite_streak": self._nonfinite_streak(record),
            "data_bottleneck": self._data_wait(record),
        }

    def _streak(self, key: str, condition: bool) -> int:
        self._streaks[key] = self._streaks.get(key, 0) + 1 if condition else 0
        if self._streaks[key] == 1:
            self._streak_start[key] = self._step - 1  # a checkpoint of it precedes the record
        return self._streaks[key]

    def _sustained(
        self, record: dict, key: str, crossed: Callable[[float], bool], records: int
    ) -> tuple[float, int] | None:
        """(value, streak) when logged `key` has `crossed` its threshold in the last `records`
        log records in a row, else None (also when the record does not log it)."""
        value = record.get(key)
        if value is None:
            return None
        count = self._streak(key, crossed(value))
        return (value, count) if count >= records else None

    def _zero_gradient(self, record: dict) -> str | None:
        seen = self._sustained(
            record,
            "gnorm",
            lambda gnorm: math.isfinite(gnorm) and gnorm <= self.zero_gnorm,
            self.zero_gnorm_records,
        )
        return None if seen is None else f"gradient norm {seen[0]:.3g} for {seen[1]} log records"

    def _exploding(self, record: dict) -> str | None:
        gnorm = record.get("gnorm")
        if gnorm is None:
            return None
        history = list(self._gnorms)
        if math.isfinite(gnorm):
            self._gnorms.append(gnorm)
        if len(history) < 5:
            return None
        typical = statistics.median(history)
        if math.isfinite(gnorm) and gnorm <= self.explode_factor * max(typical, self.zero_gnorm):
            return None
        return (
            f"gradient norm {gnorm:.3g}, more than {self.explode_factor:g}x the median "
            f"{typical:.3g} of the last {len(history)} log records"
        )

    def _nonfinite_streak(self, record: dict) -> str | None:
        count = record.get("num_nonfinite")
        if count is None:
            return None
        self._nonfinite.append(int(count))
        skipped = self._nonfinite[-1] - self._nonfinite[0]
        if skipped < self.nonfinite_limit:
            return None
        return (
            f"{skipped} updates skipped for a non-finite loss or gradient over the last "
            f"{len(self._nonfinite) - 1} log records ({count} in total)"
        )

    def _data_wait(self, record: dict) -> str | None:
        seen = self._sustained(
            record, DATA_WAIT_KEY, lambda wait: wait >= self.data_wait_limit, self.data_wait_records
        )
        if seen is None:
            return None
        return f"{100 * seen[0]:.0f}% of the time per update goes to waiting for data"


def read_log(path: str | os.PathLike) -> list[dict]:
    """The records of a train_log.jsonl; a last line cut short by a crash is ignored."""
    records = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number != len(lines):
                raise ValueError(f"{path}:{number}: not a JSON record") from None
            continue
        updates = record.get("num_updates", 0) if isinstance(record, dict) else None
        if type(updates) is not int or updates < 0:  # the x axis of every curve
            raise ValueError(
                f"{path}:{number}: not a record of the training loop (a JSON object whose "
                f"num_updates is a count): {line[:40]!r}"
            )
        records.append(record)
    return records


__all__ = ["DATA_WAIT_KEY", "SHARED_ADVICE", "Finding", "Monitor", "read_log"]
