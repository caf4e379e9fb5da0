"""Checks on paths a user names, made before a command builds or writes anything.

Each raises `w2vkit.config.UsageError` with the flag or config key (`what`) in the message, so
`w2vkit` can print one line instead of the traceback of a failure much later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from w2vkit.config import UsageError

if TYPE_CHECKING:
    import torch


def writable_folder(path: str | os.PathLike, what: str) -> None:
    """`path` is a folder we can write in, or one we can create (missing parents included)."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())  # "." or "/" at the latest
    if not existing.is_dir():
        raise UsageError(f"{_named(what, path)}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{_named(what, path)}: no permission to write in {existing}")


def existing_folder(path: str | os.PathLike, what: str, *, hint: str = "") -> Path:
    """`path` exists and is a folder; `hint` (what to do instead) ends the message otherwise."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{_named(what, path)} does not exist{hint}")
    if not path.is_dir():
        raise UsageError(f"{_named(what, path)} is a file, not a folder{hint}")
    return path


def _named(what: str, path: Path) -> str:
    """`train.out_dir=runs/x` for a config key, `--dest runs/x` for a flag or an argument."""
    return f"{what}={path}" if "." in what and not what.startswith("-") else f"{what} {path}"


def device_option(name: str) -> torch.device:
    """`--device` as a torch device: `auto` is CUDA when there is one; CUDA that is not there is
    refused now rather than when the model moves (extract, transcribe)."""
    import torch  # here, not at the top: `w2vkit manifest` uses this module without torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(
            f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise UsageError(
                f"--device {name}: no CUDA device is available (torch {torch.__version__}, "
                f"{build}); use --device cpu"
            )
        if device.index is not None and device.index >= count:
            raise UsageError(
                f"--device {name}: there are only {count} CUDA devices (0..{count - 1})"
            )
    return device
