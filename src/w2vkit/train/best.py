"""checkpoint_best.pt: which validation is the best, and its repair after a crash.

A validation is ranked by the objective's `best_metric` and then its `tie_breaks` (fine-tuning: WER,
then CER, then loss), lower first. A later validation that ranks equal to or better than the best
so far becomes the best: with a WER stuck at 100 % the later, better-CER model wins, and of two
equal models the later (longer-trained) one is kept. The best's own update is recorded
(`TrainState.best_step`, `progress["best_step"]`), so that a crash between writing
checkpoint_last.pt and copying it to checkpoint_best.pt is recognised by update, never by a metric
that every later checkpoint carries too.
"""

from __future__ import annotations

import math
from pathlib import Path

from w2vkit.train.checkpoint import BEST, LAST, copy_atomic, saved_step


def rank(record: dict, keys: tuple[str, ...]) -> tuple[float, ...] | None:
    """The values of `keys` in a validation record, in order; None when the first is missing or
    not finite (such a validation is never the best). A missing or non-finite tie-break ranks last."""
    first = record.get(keys[0])
    if first is None or not math.isfinite(first):
        return None
    return tuple(_finite_or_inf(record.get(k)) for k in keys)


def improves(candidate: tuple[float, ...] | None, best: tuple[float, ...]) -> bool:
    """Whether a validation ranked `candidate` replaces the best so far (ranked `best`, () for
    none): when it ranks lower or equal, key by key (ties go to the later one)."""
    if candidate is None:
        return False
    padded = best + (math.inf,) * (len(candidate) - len(best))  # an older best without tie-breaks
    return candidate <= padded[: len(candidate)]


def _finite_or_inf(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else math.inf


def reconcile_best(out_dir: Path, last: dict, metric: str) -> str | None:
    """Repair `checkpoint_best.pt` after a crash between writing last and copying it to best.

    Last is the best state only when its update is the best's update (`progress["best_step"]`);
    when best holds another update, copy last over it. Returns a note saying so, else None. A
    checkpoint from before `best_step` was recorded is left alone: its metrics cannot tell.
    """
    progress = last["progress"]
    best_step = progress.get("best_step")
    if best_step is None or best_step != progress["step"]:
        return None
    best = Path(out_dir) / BEST
    if best.is_file() and saved_step(best) == best_step:
        return None
    copy_atomic(Path(out_dir) / LAST, best)
    value = ((last.get("metrics") or {}).get("valid") or {}).get(metric)
    said = f", validation {metric} {value:.4g}" if isinstance(value, (int, float)) else ""
    return (
        f"{best} was stale (a crash came between saving {LAST} and copying it): it now holds "
        f"update {best_step}{said}"
    )


__all__ = ["improves", "rank", "reconcile_best"]
