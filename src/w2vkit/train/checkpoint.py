"""Self-describing training checkpoints: the payload, atomic writes, `weights_only` loads, pruning.

A checkpoint (`payload(state, ...)`, read back by `restore`) is a dict of plain types and tensors,
so `torch.load(..., weights_only=True)` reads it without unpickling code:

    format      "w2vkit.pretrain/1" (the name predates fine-tuning; every run writes it)
    config      the run's resolved config as a dict (`config["model"]` rebuilds the model)
    model       model state_dict (unwrapped from DDP)
    optimizer   optimizer state_dict            schedule   the schedule's state_dict
    scaler      GradScaler state_dict or None   sampler    training batch sampler state_dict
    rng         {"torch", "cuda", "generator", "numpy", "python"} states (of rank 0)
    progress    {"step", "epoch", "best_valid_loss", "num_nonfinite", "consecutive_nonfinite",
                 "num_failed_files", "train_seconds", "planned_steps" (a time budget's plan, 0: none)}
    metrics     {"window": the unlogged training sums of all ranks together (`MetricsWindow`
                 state; rank 0 restores it, the other ranks start from zeros),
                 "valid": last validation record or None}

Writes go to a temporary file in the same directory, are fsynced and then renamed over the target
with `os.replace`, so a crash (even SIGKILL) mid-write leaves the previous file intact.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from w2vkit.train import dist

if TYPE_CHECKING:
    from w2vkit.train.loop import TrainState
    from w2vkit.train.metrics import MetricsWindow

FORMAT = "w2vkit.pretrain/1"
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
_INTERVAL = re.compile(r"^checkpoint_(\d+)_(\d+)\.pt$")
_TMP_MARK = ".tmp-"


def payload(
    state: TrainState, config: dict, last_valid: dict | None, *, window: MetricsWindow
) -> dict:
    """The checkpoint of `state` (see the module docstring); `window` is
    `state.window.all_reduced(device)`, the unlogged sums of every rank (a collective)."""
    return {
        "format": FORMAT,
        "config": config,
        "model": dist.unwrap(state.model).state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "schedule": state.schedule.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "rng": capture_rng(state.generator),
        "sampler": state.sampler.state_dict(),
        "progress": {
            "step": state.step,
            "epoch": state.epoch,
            "best_valid_loss": state.best_valid_loss,
            "num_nonfinite": state.num_nonfinite,
            "consecutive_nonfinite": state.consecutive_nonfinite,
            "num_failed_files": state.num_failed_files,
            "train_seconds": state.train_seconds,
            "planned_steps": state.planned_steps,
        },
        "metrics": {"window": window.state_dict(), "valid": last_valid},
    }


def restore(state: TrainState, payload: dict) -> None:
    """Put a checkpoint back into `state` (built for the same config), on every rank."""
    dist.unwrap(state.model).load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.schedule.load_state_dict(payload["schedule"])
    if state.scaler is not None and payload["scaler"] is not None:
        state.scaler.load_state_dict(payload["scaler"])
    restore_rng(payload["rng"], state.generator)
    state.sampler.load_state_dict(payload["sampler"])
    window = payload["metrics"]["window"]
    if not dist.is_main():  # the saved sums are every rank's: count them once
        window = {
            **window,
            "sums": dict.fromkeys(window["sums"], 0.0),
            "means": dict.fromkeys(window["means"], 0.0),
            "num_micro_batches": 0,
            "audio_samples": 0.0,
        }
    state.window.load_state_dict(window)
    progress = payload["progress"]
    state.step, state.epoch = int(progress["step"]), int(progress["epoch"])
    state.best_valid_loss = float(progress["best_valid_loss"])
    state.num_nonfinite = int(progress["num_nonfinite"])
    state.consecutive_nonfinite = int(progress["consecutive_nonfinite"])
    state.num_failed_files = int(progress.get("num_failed_files", 0))
    state.train_seconds = float(progress.get("train_seconds", 0.0))
    state.planned_steps = int(progress.get("planned_steps", 0))


def interval_name(epoch: int, step: int) -> str:
    return f"checkpoint_{epoch}_{step}.pt"


def save_atomic(payload: dict, path: Path) -> None:
    """torch.save to `.<name>.tmp-<pid>` beside `path`, fsync, then rename over `path`."""
    _write_atomic(Path(path), lambda f: torch.save(payload, f))


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy a finished checkpoint under another name with the same temp-file-and-rename guarantee."""

    def copy(f) -> None:
        with open(src, "rb") as fin:
            shutil.copyfileobj(fin, f, length=16 << 20)

    _write_atomic(Path(dst), copy)


def _write_atomic(path: Path, write) -> None:
    # A crash leaves at most a stale temp file: `path` is either the old or the new file, whole.
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_checkpoints(
    payload: dict, out_dir: Path, *, epoch: int, step: int, interval: bool, best: bool, keep: int
) -> None:
    """checkpoint_last.pt always; checkpoint_<epoch>_<step>.pt and checkpoint_best.pt when asked."""
    last = out_dir / LAST
    save_atomic(payload, last)
    if interval:
        copy_atomic(last, out_dir / interval_name(epoch, step))
        prune_interval_checkpoints(out_dir, keep)
    if best:
        copy_atomic(last, out_dir / BEST)


def _fsync_dir(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is on disk (POSIX; no-op elsewhere).
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: str | Path) -> dict:
    """Read a w2vkit training checkpoint on the CPU without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt, or a pickle that needs code: all unreadable here
        raise ValueError(f"checkpoint {path} cannot be read as a w2vkit checkpoint: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"checkpoint {path} has format {found!r}, expected {FORMAT!r}")
    return payload


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete temp files left by a write that was killed; returns what was removed."""
    stale = [p for p in Path(directory).glob(f".*.pt{_TMP_MARK}*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def prune_interval_checkpoints(directory: Path, keep: int) -> list[Path]:
    """Keep the `keep` newest checkpoint_<epoch>_<step>.pt (by step); 0 keeps all. Returns removed."""
    if keep <= 0:
        return []
    found = []
    for p in Path(directory).iterdir():
        match = _INTERVAL.match(p.name)
        if match:
            found.append((int(match.group(2)), int(match.group(1)), p))
    found.sort(reverse=True)
    removed = [p for _, _, p in found[keep:]]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def capture_rng(generator: torch.Generator) -> dict:
    """All random states a run touches, as tensors and plain types (weights_only-safe)."""
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # legacy=True: (name, keys, pos, has_gauss, cached_gaussian)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            *map(_plain, np_state[2:]),
        ],
        "python": _to_lists(random.getstate()),
    }


def restore_rng(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["generator"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value


__all__ = [
    "BEST",
    "FORMAT",
    "LAST",
    "capture_rng",
    "copy_atomic",
    "interval_name",
    "load",
    "payload",
    "prune_interval_checkpoints",
    "remove_stale_temp_files",
    "restore",
    "restore_rng",
    "save_atomic",
    "write_checkpoints",
]
