"""checkpoint_best.pt: which validation is the best, and its repair after a crash."""

from __future__ import annotations

from pathlib import Path

from w2vkit.train.checkpoint import BEST, LAST, copy_atomic, saved_step


def reconcile_best(out_dir: Path, last: dict, metric: str) -> str | None:
    """Repair `checkpoint_best.pt` after a crash between writing last and copying it to best.

    When last's own validation `metric` (the objective's best_metric: loss, or WER for CTC) is
    the best it records but best holds another update, last is that best state: copy it.
    Returns a note saying so, else None.
    """
    valid = (last.get("metrics") or {}).get("valid") or {}
    progress = last["progress"]
    loss, best_loss = valid.get(metric), progress.get("best_valid_loss")
    if loss is None or best_loss is None or not loss == best_loss:
        return None
    best = Path(out_dir) / BEST
    if best.is_file() and saved_step(best) == progress["step"]:
        return None
    copy_atomic(Path(out_dir) / LAST, best)
    return (
        f"{best} was stale (a crash came between saving {LAST} and copying it): it now holds "
        f"update {progress['step']}, validation {metric} {loss:.4g}"
    )


__all__ = ["reconcile_best"]
