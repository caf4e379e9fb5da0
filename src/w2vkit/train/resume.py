"""Which checkpoint a run in a directory continues from (`resume_point`)."""

from __future__ import annotations

from pathlib import Path

from w2vkit.train.checkpoint import (
    BEST,
    LAST,
    CheckpointUnreadable,
    checkpoints,
    load,
    saved_step,
)


def resume_point(
    out_dir: Path, *, resume_from: str | Path | None = None, overwrite: bool = False
) -> tuple[dict | None, Path | None]:
    """(payload, path) of the checkpoint a run in `out_dir` continues from, or (None, None).

    `checkpoint_last.pt` when it is readable, `resume_from` when given. A directory holding other
    checkpoints but no readable `checkpoint_last.pt` (deleted, truncated) is refused, naming
    the newest readable one, unless `overwrite`: a silent fresh start would overwrite
    `checkpoint_best.pt` and prune the old run's interval checkpoints.
    """
    out_dir = Path(out_dir)
    if resume_from:
        if not Path(resume_from).is_file():
            raise CheckpointUnreadable(f"--resume-from {resume_from}: no such file")
        return load(resume_from), Path(resume_from)
    last = out_dir / LAST
    if overwrite:
        return None, None
    if last.is_file():
        try:
            return load(last), last
        except CheckpointUnreadable as err:
            problem = str(err)
    else:
        problem = f"{out_dir} holds checkpoints of an earlier run but no {LAST}"
    others = [p for p in checkpoints(out_dir) if p.name != LAST]
    if not last.is_file() and not others:
        return None, None  # a new run directory
    newest = _newest_readable(others)
    offer = (
        f"resume from the newest readable one, {newest[0]} (update {newest[1]}), with "
        f"--resume-from {newest[0]}, or start over with --overwrite"
        if newest
        else "no other checkpoint there is readable; start over with --overwrite"
    )
    raise CheckpointUnreadable(f"{problem}. {offer[0].upper()}{offer[1:]}")


def _newest_readable(paths: list[Path]) -> tuple[Path, int] | None:
    found = []
    for p in paths:
        step = saved_step(p)
        if step is not None:
            found.append((step, p.name != BEST, p))  # at equal steps, name the interval file
    if not found:
        return None
    step, _, path = max(found)
    return path, step


__all__ = ["resume_point"]
