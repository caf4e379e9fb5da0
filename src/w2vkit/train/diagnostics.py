"""Run health: named findings from the training log records, with the likely cause and what to try.

`HealthMonitor.observe(record)` takes each logged record (the dicts `RunLogger.log` writes to
train_log.jsonl; validation records are ignored) and returns the findings that became true with
it. A finding is reported once, when its condition starts, and again only after the condition
has cleared. `diagnose_log(path)` replays a whole log. Thresholds are the `HealthMonitor`
arguments; docs/diagnostics.md explains each.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

NEGATIVES_EQUAL_KEY = "negatives_equal_positive"
"""Logged fraction of sampled negatives that equal their positive (if the loop logs it)."""
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
    """The update its evidence starts after: the window (plateau) or the first record of the
    streak (collapse) begins there; a rescue rolls back to a checkpoint no newer than it."""

    def format(self) -> str:
        return (
            f"health [{self.code}] at update {self.step}: {self.message}\n"
            f"  likely cause: {self.likely_cause}\n  try: {self.what_to_try}"
        )


class HealthMonitor:
    """Watches training records; `observe` returns the new findings.

    `num_negatives`: distractors per masked frame (within-utterance + cross-sample + codebook), so
    chance is log2(1 + num_negatives) bits. `num_groups`: quantizer codebooks G (the lowest
    possible perplexity); 0 when the model has no quantizer.
    """

    def __init__(
        self,
        num_negatives: int,
        num_groups: int,
        *,
        plateau_updates: int = 500,
        plateau_tolerance_bits: float = 0.1,
        collapse_entries_per_group: float = 2.0,
        collapse_records: int = 3,
        trivial_accuracy: float = 0.98,
        trivial_before_update: int = 2000,
        negatives_equal_limit: float = 0.1,
        negatives_equal_records: int = 3,
        zero_gnorm: float = 1e-8,
        zero_gnorm_records: int = 3,
        explode_factor: float = 20.0,
        explode_history: int = 20,
        nonfinite_window: int = 5,
        nonfinite_limit: int = 3,
        data_wait_limit: float = 0.3,
        data_wait_records: int = 3,
    ) -> None:
        if num_negatives < 1 or num_groups < 0:
            raise ValueError(
                f"need num_negatives >= 1 and num_groups >= 0, got {num_negatives}, {num_groups}"
            )
        self.chance_bits = math.log2(1 + num_negatives)
        self.num_groups = num_groups
        self.plateau_updates = plateau_updates
        self.plateau_tolerance_bits = plateau_tolerance_bits
        self.collapse_entries_per_group = collapse_entries_per_group
        self.collapse_records = collapse_records
        self.trivial_accuracy = trivial_accuracy
        self.trivial_before_update = trivial_before_update
        self.negatives_equal_limit = negatives_equal_limit
        self.negatives_equal_records = negatives_equal_records
        self.zero_gnorm = zero_gnorm
        self.zero_gnorm_records = zero_gnorm_records
        self.explode_factor = explode_factor
        self.nonfinite_window = nonfinite_window
        self.nonfinite_limit = nonfinite_limit
        self.data_wait_limit = data_wait_limit
        self.data_wait_records = data_wait_records
        self._active: set[str] = set()
        self._losses: deque[tuple[int, float]] = deque()
        self._streaks: dict[str, int] = {}
        self._streak_start: dict[str, int] = {}
        """The update before each streak's first record (its evidence starts after it)."""
        self._step = 0
        self._gnorms: deque[float] = deque(maxlen=explode_history)
        self._nonfinite: deque[int] = deque(maxlen=nonfinite_window + 1)

    @classmethod
    def for_model(cls, model: dict | Any, **thresholds) -> HealthMonitor:
        """A monitor for a model config: a `ModelConfig` or its dict (config.yaml's `model`)."""
        if not isinstance(model, dict):
            from w2vkit.config import to_dict

            model = to_dict(model)
        return cls(*negatives_from_config(model), **thresholds)

    def observe(self, record: dict) -> list[Finding]:
        """New findings for one log record (validation records: none)."""
        if record.get("split", "train") != "train":
            return []
        step = int(record.get("num_updates", 0))
        self._step = step
        conditions = {
            "loss_at_chance": self._plateau(record, step),
            "codebook_collapse": self._collapse(record),
            "trivial_task": self._trivial(record, step),
            "negatives_equal_positive": self._negatives_equal(record),
            "zero_gradient": self._zero_gradient(record),
            "exploding_gradient": self._exploding(record),
            "nonfinite_streak": self._nonfinite_streak(record),
            "data_bottleneck": self._data_wait(record),
        }
        findings = []
        for code, message in conditions.items():
            if message is None:
                self._active.discard(code)
            elif code not in self._active:
                self._active.add(code)
                cause, remedy = ADVICE[code]
                since = self._since(code, step)
                findings.append(Finding(code, message, cause, remedy, step, since))
        return findings

    def _streak(self, key: str, condition: bool) -> int:
        self._streaks[key] = self._streaks.get(key, 0) + 1 if condition else 0
        if self._streaks[key] == 1:
            self._streak_start[key] = self._step - 1  # a checkpoint of it precedes the record
        return self._streaks[key]

    def _since(self, code: str, step: int) -> int:
        if code == "loss_at_chance":
            return max(step - self.plateau_updates, 0)
        if code == "codebook_collapse":
            return self._streak_start["collapse"]
        return step

    def _plateau(self, record: dict, step: int) -> str | None:
        contrastive = record.get("loss_0")
        if contrastive is None or not math.isfinite(contrastive):
            return None
        self._losses.append((step, contrastive))
        while self._losses[0][0] <= step - self.plateau_updates:
            self._losses.popleft()
        # The median over the window: small batches make single records jump by tenths of a bit.
        typical = statistics.median(loss for _, loss in self._losses)
        if step < self.plateau_updates or typical < self.chance_bits - self.plateau_tolerance_bits:
            return None
        return (
            f"the contrastive loss (median {typical:.3f} bits over the last "
            f"{self.plateau_updates} updates) is within {self.plateau_tolerance_bits} bits of "
            f"chance log2(1+K) = {self.chance_bits:.3f}"
        )

    def _collapse(self, record: dict) -> str | None:
        if self.num_groups == 0:
            return None
        values = {k: record[k] for k in ("prob_perplexity", "code_perplexity") if k in record}
        floor = self.collapse_entries_per_group * self.num_groups
        low = {k: v for k, v in values.items() if math.isfinite(v) and v <= floor}
        if self._streak("collapse", bool(low)) < self.collapse_records:
            return None
        named = ", ".join(f"{k} {v:.2f}" for k, v in low.items())
        return (
            f"{named} <= {floor:g} (G = {self.num_groups} codebooks: at most "
            f"{self.collapse_entries_per_group:g} entries in use per codebook) for "
            f"{self._streaks['collapse']} log records"
        )

    def _trivial(self, record: dict, step: int) -> str | None:
        accuracy = record.get("accuracy")
        if accuracy is None or step > self.trivial_before_update:
            return None
        if accuracy < self.trivial_accuracy:
            return None
        return (
            f"contrastive accuracy {accuracy:.3f} at update {step} (>= {self.trivial_accuracy} "
            f"before update {self.trivial_before_update})"
        )

    def _negatives_equal(self, record: dict) -> str | None:
        fraction = record.get(NEGATIVES_EQUAL_KEY)
        if fraction is None:
            return None
        # A streak, not one record: in the first updates, before the codes spread out, many
        # frames share a code and so equal their negatives; a healthy run is past it within ~20
        # updates (the `cpu` recipe: 12.6% at update 10, 2.7% at update 30).
        count = self._streak("negatives_equal", fraction > self.negatives_equal_limit)
        if count < self.negatives_equal_records:
            return None
        return (
            f"{100 * fraction:.1f}% of the negatives equal their positive for {count} log records"
        )

    def _zero_gradient(self, record: dict) -> str | None:
        gnorm = record.get("gnorm")
        if gnorm is None:
            return None
        count = self._streak("zero_gnorm", math.isfinite(gnorm) and gnorm <= self.zero_gnorm)
        if count < self.zero_gnorm_records:
            return None
        return f"gradient norm {gnorm:.3g} for {count} log records"

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
        wait = record.get(DATA_WAIT_KEY)
        if wait is None:
            return None
        count = self._streak("data_wait", wait >= self.data_wait_limit)
        if count < self.data_wait_records:
            return None
        return f"{100 * wait:.0f}% of the time per update goes to waiting for data"


ADVICE: dict[str, tuple[str, str]] = {
    "loss_at_chance": (
        "nothing is being learned: the learning rate is too low (or warm-up too long), the "
        "batch is too small, or the feature penalty shrinks a small conv extractor to zero",
        "raise optim.lr or shorten optim.warmup_steps; use larger batches "
        "(data.max_batch_samples, train.update_freq); set loss.feature_penalty_weight=0 for "
        "small models",
    ),
    "codebook_collapse": (
        "codebook collapse: a few entries serve every frame, so the targets carry little "
        "information; the diversity loss is too weak or the Gumbel temperature falls too fast",
        "raise loss.diversity_weight (0.1 in the paper); start the temperature higher or decay "
        "it more slowly (model.quantizer.temperature_start / temperature_decay)",
    ),
    "trivial_task": (
        "the contrastive task is trivial: negatives are identical to the positive or easy to "
        "tell apart (silence, repeated frames, too little masking so the context shows the "
        "answer)",
        "check masking.time_prob (0.65) and time_span_frames (10); remove long silences or "
        "duplicate files; use longer crops so negatives come from real speech",
    ),
    "negatives_equal_positive": (
        "many negatives are copies of the positive: utterances too short for K distinct "
        "negatives, or long stretches of identical frames (digital silence)",
        "raise data.min_samples; trim silence; lower model.num_negatives for short crops",
    ),
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
}


def negatives_from_config(model: dict) -> tuple[int, int]:
    """(num_negatives, num_groups) from a run's `model` config section (config.yaml)."""
    negatives = sum(
        int(model.get(k, 0))
        for k in ("num_negatives", "num_cross_sample_negatives", "num_codebook_negatives")
    )
    quantizer = model.get("quantizer", {})
    groups = int(quantizer.get("num_groups", 2)) if quantizer.get("quantize_targets", True) else 0
    return negatives, groups


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


def diagnose_log(
    path: str | os.PathLike,
    *,
    num_negatives: int | None = None,
    num_groups: int | None = None,
    **thresholds,
) -> list[Finding]:
    """Every finding over a whole train_log.jsonl. K and G default to the run's config.yaml
    (beside the log)."""
    path = Path(path)
    if num_negatives is None or num_groups is None:
        config_path = path.parent / "config.yaml"
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: pass num_negatives and num_groups")
        model = yaml.safe_load(config_path.read_text(encoding="utf-8")).get("model", {})
        negatives, groups = negatives_from_config(model)
        num_negatives = negatives if num_negatives is None else num_negatives
        num_groups = groups if num_groups is None else num_groups
    monitor = HealthMonitor(num_negatives, num_groups, **thresholds)
    return [finding for record in read_log(path) for finding in monitor.observe(record)]
