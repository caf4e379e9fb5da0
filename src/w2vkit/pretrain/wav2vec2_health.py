"""The health signatures of a wav2vec 2.0 run: the contrastive loss at chance, codebook collapse,
a trivial task, negatives equal to their positive (with the signatures every objective shares,
`w2vkit.train.diagnostics.Monitor`). `diagnose_log(path)` replays a whole log; docs/diagnostics.md
explains each threshold.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import deque
from pathlib import Path
from typing import Any

import yaml

from w2vkit.train.diagnostics import SHARED_ADVICE, Finding, Monitor, read_log

NEGATIVES_EQUAL_KEY = "negatives_equal_positive"
"""Logged fraction of sampled negatives that equal their positive (if the loop logs it)."""

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
    "ended_at_chance": (
        "the run ended before it left the plateau: too few updates for this recipe (a time "
        "budget shorter than the warm-up, or a run stopped early), or it never learned",
        "train longer (train.max_minutes, train.max_steps); on a short budget shorten "
        "optim.warmup_steps; let train.on_stuck=rescue act on a long run",
    ),
} | SHARED_ADVICE
"""(likely cause, what to try) per finding code of a wav2vec 2.0 run."""


class HealthMonitor(Monitor):
    """A wav2vec 2.0 run's monitor; `observe` returns the new findings.

    `num_negatives`: distractors per masked frame (within-utterance + cross-sample + codebook), so
    chance is log2(1 + num_negatives) bits. `num_groups`: quantizer codebooks G (the lowest
    possible perplexity); 0 when the model has no quantizer. The other keyword arguments are
    thresholds (`Monitor`'s too).
    """

    ADVICE = ADVICE

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
        **shared: Any,
    ) -> None:
        if num_negatives < 1 or num_groups < 0:
            raise ValueError(
                f"need num_negatives >= 1 and num_groups >= 0, got {num_negatives}, {num_groups}"
            )
        super().__init__(**shared)
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
        self._losses: deque[tuple[int, float]] = deque()

    @classmethod
    def for_model(cls, model: dict | Any, **thresholds) -> HealthMonitor:
        """A monitor for a model config: a `ModelConfig` or its dict (config.yaml's `model`)."""
        if not isinstance(model, dict):
            from w2vkit.config import to_dict

            model = to_dict(model)
        return cls(*negatives_from_config(model), **thresholds)

    def conditions(self, record: dict, step: int) -> dict[str, str | None]:
        return {
            "loss_at_chance": self._plateau(record, step),
            "codebook_collapse": self._collapse(record),
            "trivial_task": self._trivial(record, step),
            "negatives_equal_positive": self._negatives_equal(record),
        } | super().conditions(record, step)

    def since(self, code: str, step: int) -> int:
        if code == "loss_at_chance":  # the window of `plateau_updates` before `step`
            return max(step - self.plateau_updates, 0)
        if code == "codebook_collapse":
            return self._streak_start["collapse"]
        return super().since(code, step)

    def finish(self) -> list[Finding]:
        """`ended_at_chance`: the last records' median contrastive loss is still within the
        tolerance of chance, and no `loss_at_chance` is active (a run shorter than its window)."""
        if not self._losses or "loss_at_chance" in self._active:
            return super().finish()
        last = [loss for _, loss in list(self._losses)[-5:]]
        typical = statistics.median(last)
        if typical < self.chance_bits - self.plateau_tolerance_bits:
            return super().finish()
        cause, remedy = self.ADVICE["ended_at_chance"]
        message = (
            f"the run ended on the plateau: the contrastive loss (median {typical:.3f} bits over "
            f"its last {len(last)} log records) is within {self.plateau_tolerance_bits} bits of "
            f"chance log2(1+K) = {self.chance_bits:.3f}"
        )
        finding = Finding("ended_at_chance", message, cause, remedy, self._step, self._step)
        return [*super().finish(), finding]

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
        # A streak, not one record: in the first updates, before the codes spread out, many
        # frames share a code and so equal their negatives; a healthy run is past it within ~20
        # updates (the `cpu` recipe: 12.6% at update 10, 2.7% at update 30).
        seen = self._sustained(
            record,
            NEGATIVES_EQUAL_KEY,
            lambda fraction: fraction > self.negatives_equal_limit,
            self.negatives_equal_records,
        )
        if seen is None:
            return None
        return (
            f"{100 * seen[0]:.1f}% of the negatives equal their positive for {seen[1]} log records"
        )


def negatives_from_config(model: dict) -> tuple[int, int]:
    """(num_negatives, num_groups) from a run's `model` config section (config.yaml)."""
    negatives = sum(
        int(model.get(k, 0))
        for k in ("num_negatives", "num_cross_sample_negatives", "num_codebook_negatives")
    )
    quantizer = model.get("quantizer", {})
    groups = int(quantizer.get("num_groups", 2)) if quantizer.get("quantize_targets", True) else 0
    return negatives, groups


def monitor_for(config: dict) -> HealthMonitor | None:
    """The monitor of a run's config (config.yaml's dict); None when it names no negatives (a
    config without its `model`)."""
    negatives, groups = negatives_from_config(config.get("model") or {})
    return HealthMonitor(negatives, groups) if negatives else None


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
    found = [finding for record in read_log(path) for finding in monitor.observe(record)]
    return found + monitor.finish()


__all__ = [
    "ADVICE",
    "NEGATIVES_EQUAL_KEY",
    "HealthMonitor",
    "diagnose_log",
    "monitor_for",
    "negatives_from_config",
]
