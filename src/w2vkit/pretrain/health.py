"""Health findings of the data2vec 2.0 and BEST-RQ objectives, on top of the objective-free ones.

Each monitor reads the train log records as `w2vkit.train.diagnostics.HealthMonitor` does and
reports a `Finding` once when its condition starts (again only after it has cleared); the gradient,
non-finite and data-wait findings come from a `HealthMonitor` that is given the same records
without the keys whose meaning there is wav2vec 2.0's.
- data2vec 2.0 `target_collapse`: `target_var` (the teacher target's spread across frames) below
  `min_target_var` (fairseq stops the run at 0.1 after 5,000 updates); `prediction_collapse`:
  `pred_var` below `min_pred_var` (fairseq: 0.01).
- BEST-RQ `accuracy_at_chance`: masked-frame accuracy no better than always guessing the most
  frequent code (`top_code_frac`); `code_dominates`: that code holds most masked frames.
"""

from __future__ import annotations

from collections.abc import Callable

from w2vkit.train.diagnostics import Finding, HealthMonitor

Check = Callable[[dict, int], "str | None"]

ADVICE: dict[str, tuple[str, str]] = {
    "target_collapse": (
        "representation collapse: the teacher maps every frame to nearly the same target, which "
        "the student predicts without listening; the teacher follows the student too quickly "
        "(EMA decay too low early) or the learning rate is too high for the batch",
        "raise data2vec2.ema_decay (0.999 in the paper) or lengthen data2vec2.ema_anneal_end_step; "
        "keep data2vec2.instance_norm_target_layer on; lower optim.lr or lengthen the warm-up",
    ),
    "prediction_collapse": (
        "the decoder outputs nearly the same vector at every masked frame: the student regresses "
        "to the mean target instead of predicting from context",
        "lower optim.lr; check that data2vec2.average_top_k_layers is below the layer count; mask "
        "less (model.masking.time_prob) so that the context says more",
    ),
    "accuracy_at_chance": (
        "the encoder predicts no better than the most frequent code: the codes do not follow "
        "the audio (silence or a constant level dominates the log-mel), or nothing is learned",
        "use data.normalize=true and trim long silences; raise optim.lr or shorten the warm-up; "
        "use fewer codes (best_rq.codebook_size) for a small model or corpus",
    ),
    "code_dominates": (
        "one code labels most masked frames, so the task carries little information: the "
        "projected features barely vary (silence, DC offset, clipping) or the codebook is tiny",
        "trim silences and check the audio level; raise best_rq.codebook_dim or codebook_size; "
        "use several codebooks (best_rq.num_codebooks)",
    ),
}


class _ObjectiveHealth:
    """Findings from `checks` (code -> check of a record and its update), plus the generic ones."""

    def __init__(self, checks: dict[str, Check], hidden_keys: tuple[str, ...]) -> None:
        self._checks = checks
        self._hidden = hidden_keys
        self._generic = HealthMonitor(num_negatives=1, num_groups=0)
        self._active: set[str] = set()
        self._streaks: dict[str, int] = {}

    def streak(self, key: str, condition: bool) -> int:
        self._streaks[key] = self._streaks.get(key, 0) + 1 if condition else 0
        return self._streaks[key]

    def observe(self, record: dict) -> list[Finding]:
        """New findings for one log record (validation records: none)."""
        findings = self._generic.observe({k: v for k, v in record.items() if k not in self._hidden})
        if record.get("split", "train") != "train":
            return findings
        step = int(record.get("num_updates", 0))
        for code, check in self._checks.items():
            message = check(record, step)
            if message is None:
                self._active.discard(code)
            elif code not in self._active:
                self._active.add(code)
                cause, remedy = ADVICE[code]
                findings.append(Finding(code, message, cause, remedy, step))
        return findings


class Data2Vec2Health(_ObjectiveHealth):
    def __init__(
        self,
        *,
        min_target_var: float = 0.1,
        min_pred_var: float = 0.01,
        after_update: int = 500,
        records: int = 3,
    ) -> None:
        def low(key: str, floor: float) -> Check:
            def check(record: dict, step: int) -> str | None:
                value = record.get(key)
                below = value is not None and step >= after_update and value < floor
                count = self.streak(key, below)
                if count < records:
                    return None
                return f"{key} {value:.4f} < {floor} for {count} log records"

            return check

        super().__init__(
            {
                "target_collapse": low("target_var", min_target_var),
                "prediction_collapse": low("pred_var", min_pred_var),
            },
            hidden_keys=(),
        )


class BestRQHealth(_ObjectiveHealth):
    def __init__(
        self,
        *,
        chance_margin: float = 0.02,
        chance_after_update: int = 500,
        dominant_share: float = 0.5,
        records: int = 3,
    ) -> None:
        def at_chance(record: dict, step: int) -> str | None:
            accuracy, chance = record.get("accuracy"), record.get("top_code_frac")
            stuck = (
                accuracy is not None
                and chance is not None
                and step >= chance_after_update
                and accuracy <= chance + chance_margin
            )
            count = self.streak("chance", stuck)
            if count < records:
                return None
            return (
                f"masked-frame accuracy {accuracy:.3f} is within {chance_margin} of always "
                f"guessing the most frequent code ({chance:.3f}) for {count} log records"
            )

        def dominates(record: dict, step: int) -> str | None:
            share = record.get("top_code_frac")
            count = self.streak("dominant", share is not None and share > dominant_share)
            if share is None or count < records:
                return None
            return (
                f"one code labels {100 * share:.1f}% of the masked frames (code perplexity "
                f"{record.get('code_perplexity', float('nan')):.1f}) for {count} log records"
            )

        # The generic monitor's `trivial_task` reads `accuracy` as wav2vec 2.0's contrastive one.
        super().__init__(
            {"accuracy_at_chance": at_chance, "code_dominates": dominates},
            hidden_keys=("accuracy",),
        )


__all__ = ["ADVICE", "BestRQHealth", "Data2Vec2Health"]
