"""Self-describing training checkpoints: the payload, atomic writes, `weights_only` loads, pruning.

A checkpoint (`payload(state, ...)`, read back by `restore`) is a dict of plain types and tensors,
so `torch.load(..., weights_only=True)` reads it without unpickling code:

    format      "w2vkit.pretrain/1" or "w2vkit.finetune/1" (`FORMATS`, by the run's kind)
    config      the run's resolved config as a dict (`config["model"]` rebuilds the model)
    model       model state_dict (unwrapped from DDP)
    optimizer   optimizer state_dict            schedule   the schedule's state_dict
    scaler      GradScaler state_dict or None   sampler    training batch sampler state_dict
    rng         {"torch", "cuda", "generator", "numpy", "python"} states (of rank 0)
    progress    {"step", "epoch", "best_metric" (the best validation's `Objective.best_metric`;
                 older checkpoints: "best_valid_loss"), "best_rank" (it and its tie-breaks),
                 "best_step" (the update checkpoint_best.pt holds), "num_nonfinite",
                 "consecutive_nonfinite", "train_seconds", "planned_steps" (a time budget's plan,
                 0: none), "plan" (the budget's plan history, `w2vkit.train.budget`), "rescues"
                 (`w2vkit.train.rescue`: update, finding, rolled_back_to, change)}
                (the files that failed to decode are in the sampler state, `failures`)
    metrics     {"window": the unlogged training sums of all ranks together (`MetricsWindow`
                 state; rank 0 restores it, the other ranks start from zeros),
                 "valid": last validation record or None}

Writes go to a temporary file in the same directory, are fsynced and then renamed over the target
with `os.replace`, so a crash (even SIGKILL) mid-write leaves the previous file intact. A full disk
says so (where, and how much the write needed); an unreadable checkpoint is refused in one line
naming the file. The run directory and its lock are `w2vkit.train.rundir`, which checkpoint a run
continues from `w2vkit.train.resume`, checkpoint_best.pt's bookkeeping `w2vkit.train.best`.
"""

from __future__ import annotations

import errno
import math
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from w2vkit.config import ConfigError
from w2vkit.interop.safe_load import needs_code, unpickling_reason
from w2vkit.train import dist
from w2vkit.train.metrics import MetricsWindow
from w2vkit.train.state import Plan, TrainState

FORMATS = {"pretrain": "w2vkit.pretrain/1", "finetune": "w2vkit.finetune/1"}
"""The format string of each kind of run's checkpoints (`run_kind`). Fine-tuning checkpoints
written before it had its own say "w2vkit.pretrain/1" too; `load` reads every one of these."""
FORMAT = FORMATS["pretrain"]
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
_INTERVAL = re.compile(r"^checkpoint_(\d+)_(\d+)\.pt$")
_TMP_MARK = ".tmp-"
_TMP_NAME = re.compile(r"^\..+\.pt\.tmp-(\d+)$")
FAILED = "checkpoint_failed.pt"


class CheckpointUnreadable(ConfigError):
    """A checkpoint file is empty, truncated, corrupt or not a w2vkit checkpoint."""


class DiskFullError(OSError):
    """A checkpoint did not fit on the disk; the previous file of that name is intact."""


def payload(
    state: TrainState, config: dict, last_valid: dict | None, *, window: MetricsWindow
) -> dict:
    """The checkpoint of `state` (see the module docstring); `window` is
    `state.window.all_reduced(device)`, the unlogged sums of every rank (a collective)."""
    return {
        "format": FORMATS[run_kind(config)],
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
            "best_metric": state.best_metric,
            "best_rank": list(state.best_rank),
            "best_step": state.best_step,
            "num_nonfinite": state.num_nonfinite,
            "consecutive_nonfinite": state.consecutive_nonfinite,
            "train_seconds": state.train_seconds,
            "planned_steps": state.planned_steps,
            "plan": state.plan.state_dict() if state.plan is not None else None,
            "rescues": [dict(r) for r in state.rescues],
        },
        "metrics": {"window": window.state_dict(), "valid": last_valid},
    }


def run_kind(config: dict) -> str:
    """ "finetune" for a config with a `ctc` section (fine-tuning's own), else "pretrain"."""
    return "finetune" if "ctc" in config else "pretrain"


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
    # Checkpoints written before the rename and the tie-breaks hold `best_valid_loss` alone.
    state.best_metric = float(
        progress.get("best_metric", progress.get("best_valid_loss", math.inf))
    )
    state.best_rank = tuple(map(float, progress.get("best_rank", [state.best_metric])))
    state.best_step = int(progress.get("best_step", 0))
    state.num_nonfinite = int(progress["num_nonfinite"])
    state.consecutive_nonfinite = int(progress["consecutive_nonfinite"])
    state.train_seconds = float(progress.get("train_seconds", 0.0))
    state.plan = _plan(progress)
    state.rescues = [dict(r) for r in progress.get("rescues", [])]


def _plan(progress: dict) -> Plan | None:
    """The time budget's plan; a checkpoint from before re-planning has only its end."""
    if progress.get("plan") is not None:
        return Plan.from_state_dict(progress["plan"])
    planned = int(progress.get("planned_steps", 0))
    return Plan(planned, [(0, 0.0, planned)]) if planned else None


def interval_name(epoch: int, step: int) -> str:
    return f"checkpoint_{epoch}_{step}.pt"


def save_atomic(payload: dict, path: Path) -> None:
    """torch.save to `.<name>.tmp-<pid>` beside `path`, fsync, then rename over `path`."""
    _write_atomic(Path(path), lambda f: torch.save(payload, f), lambda: payload_bytes(payload))


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy a finished checkpoint under another name with the same temp-file-and-rename guarantee."""

    def copy(f) -> None:
        with open(src, "rb") as fin:
            shutil.copyfileobj(fin, f, length=16 << 20)

    _write_atomic(Path(dst), copy, lambda: Path(src).stat().st_size)


def _write_atomic(path: Path, write, size) -> None:
    # A crash leaves at most a stale temp file: `path` is either the old or the new file, whole.
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        if _is_disk_full(err):
            tmp.unlink(missing_ok=True)  # first, so that the free space reported is real
            raise _disk_full(path, size()) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _is_disk_full(err: BaseException) -> bool:
    """ENOSPC/EDQUOT, or torch's zip writer's own words for a short write ("unexpected pos")."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return "unexpected pos" in str(err) or "file write failed" in str(err)


def _disk_full(path: Path, needed: int) -> DiskFullError:
    free = shutil.disk_usage(path.parent).free
    kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
    err = DiskFullError(
        f"disk full: writing {path} needs about {_human(needed)}, {_human(free)} free on "
        f"{path.parent}; {kept}. Free space there or point train.out_dir elsewhere"
    )
    err.errno = errno.ENOSPC
    return err


def payload_bytes(obj) -> int:
    """Bytes of the tensors in a (nested) payload: what `torch.save` writes, give or take."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(payload_bytes(v) for v in obj)
    return 0


def _human(num_bytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "bytes" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError


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
    """Read a w2vkit training checkpoint on the CPU without executing pickled code.

    Raises `CheckpointUnreadable` (one line naming the file) for an empty, truncated, corrupt or
    foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointUnreadable(f"checkpoint {path} is empty (0 bytes): its write was cut short")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt, or a pickle that needs code: all unreadable here
        raise CheckpointUnreadable(f"checkpoint {path} cannot be read: {_why(err)}") from None
    if not isinstance(payload, dict) or payload.get("format") not in FORMATS.values():
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        expected = " or ".join(map(repr, FORMATS.values()))
        raise CheckpointUnreadable(f"checkpoint {path} has format {found!r}, expected {expected}")
    return payload


def _why(err: Exception) -> str:
    """torch's reason in a few words, without its advice to retry unsafely."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError):
        reason = unpickling_reason(err)
        return f"it needs code to load ({reason})" if needs_code(reason) else f"corrupt ({reason})"
    if "central directory" in text or "zip archive" in text or isinstance(err, EOFError):
        return "truncated or corrupt (not a complete zip archive)"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"truncated or corrupt ({first[:160]})"


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete temp files left by a write that was killed (their PID is gone); returns them.

    A temp file of a live process (a run in the same directory) is left alone.
    """
    stale = []
    for p in Path(directory).glob(f".*.pt{_TMP_MARK}*"):
        match = _TMP_NAME.match(p.name)
        if p.is_file() and match and not _alive(int(match.group(1))):
            p.unlink(missing_ok=True)
            stale.append(p)
    return stale


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing while it cleans up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def checkpoints(out_dir: Path) -> list[Path]:
    """The checkpoints of a run directory (last, best, interval), by name."""
    if not out_dir.is_dir():
        return []
    names = [p for p in out_dir.iterdir() if p.name in (LAST, BEST) or _INTERVAL.match(p.name)]
    return sorted(names)


def saved_step(path: Path) -> int | None:
    """The update a checkpoint holds, or None if it is unreadable (tensors are not read in)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(payload["progress"]["step"])
    except Exception:  # noqa: BLE001 (any unreadable file is just not a candidate)
        return None


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
    "FORMATS",
    "LAST",
    "FAILED",
    "CheckpointUnreadable",
    "DiskFullError",
    "capture_rng",
    "checkpoints",
    "copy_atomic",
    "interval_name",
    "load",
    "payload",
    "payload_bytes",
    "saved_step",
    "prune_interval_checkpoints",
    "remove_stale_temp_files",
    "restore",
    "restore_rng",
    "run_kind",
    "save_atomic",
    "write_checkpoints",
]
