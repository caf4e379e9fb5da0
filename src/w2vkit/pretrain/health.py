"""Health signatures of the data2vec 2.0 and BEST-RQ objectives, beside the shared ones.

Each monitor is a `w2vkit.train.diagnostics.Monitor` (gradient, non-finite and data-wait findings)
with the objective's own conditions; a finding is reported once when its condition starts.
- data2vec 2.0 `target_collapse`: `target_var` (the teacher target's spread across frames) below
  `min_target_var` (fairseq stops the run at 0.1 after 5,000 updates); `prediction_collapse`:
  `pred_var` below `min_pred_var` (fairseq: 0.01).
- BEST-RQ `accuracy_at_chance`: masked-frame accuracy no better than always guessing the most
  frequent code (`top_code_frac`); `code_dominates`: that code holds most masked frames.
"""

from __future__ import annotations

from typing import ClassVar

from w2vkit.train.diagnostics import SHARED_ADVICE, Monitor

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


class Data2Vec2Monitor(Monitor):
    ADVICE: ClassVar[dict[str, tuple[str, str]]] = SHARED_ADVICE | ADVICE

    def __init__(
        self,
        *,
        min_target_var: float = 0.1,
        min_pred_var: float = 0.01,
        after_update: int = 500,
        records: int = 3,
    ) -> None:
        super().__init__()
        self.floors = {"target_var": min_target_var, "pred_var": min_pred_var}
        self.after_update = after_update
        self.records = records

    def conditions(self, record: dict, step: int) -> dict[str, str | None]:
        return {
            "target_collapse": self._low(record, step, "target_var"),
            "prediction_collapse": self._low(record, step, "pred_var"),
            **super().conditions(record, step),
        }

    def _low(self, record: dict, step: int, key: str) -> str | None:
        floor = self.floors[key]
        value = record.get(key)
        count = self._streak(key, value is not None and step >= self.after_update and value < floor)
        if value is None or count < self.records:
            return None
        return f"{key} {value:.4f} < {floor} for {count} log records"


class BestRQMonitor(Monitor):
    ADVICE: ClassVar[dict[str, tuple[str, str]]] = SHARED_ADVICE | ADVICE

    def __init__(
        self,
        *,
        chance_margin: float = 0.02,
        chance_after_update: int = 500,
        dominant_share: float = 0.5,
        records: int = 3,
    ) -> None:
        super().__init__()
        self.chance_margin = chance_margin
        self.chance_after_update = chance_after_update
        self.dominant_share = dominant_share
        self.records = records

    def conditions(self, record: dict, step: int) -> dict[str, str | None]:
        return {
            "accuracy_at_chance": self._at_chance(record, step),
            "code_dominates": self._dominates(record),
            **super().conditions(record, step),
        }

    def _at_chance(self, record: dict, step: int) -> str | None:
        accuracy, chance = record.get("accuracy"), record.get("top_code_frac")
        stuck = (
            accuracy is not None
            and chance is not None
            and step >= self.chance_after_update
            and accuracy <= chance + self.chance_margin
        )
        count = self._streak("chance", stuck)
        if accuracy is None or chance is None or count < self.records:
            return None
        return (
            f"masked-frame accuracy {accuracy:.3f} is within {self.chance_margin} of always "
            f"guessing the most frequent code ({chance:.3f}) for {count} log records"
        )

    def _dominates(self, record: dict) -> str | None:
        share = record.get("top_code_frac")
        count = self._streak("dominant", share is not None and share > self.dominant_share)
        if share is None or count < self.records:
            return None
        return (
            f"one code labels {100 * share:.1f}% of the masked frames (code perplexity "
            f"{record.get('code_perplexity', float('nan')):.1f}) for {count} log records"
        )


__all__ = ["ADVICE", "BestRQMonitor", "Data2Vec2Monitor"]
