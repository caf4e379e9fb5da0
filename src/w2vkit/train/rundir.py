"""The run directory: one live run at a time (`RunLock`), and the files a run writes when it really
starts (`start_run_files`: config.yaml, the log trimmed to the resumed update, a clean slate)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from w2vkit.config import ConfigError
from w2vkit.train.checkpoint import checkpoints

LOCK = ".w2vkit-run.lock"
CONFIG = "config.yaml"
LOG = "train_log.jsonl"


class RunLocked(ConfigError):
    """Another live process holds the run directory."""


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


class RunLock:
    """An exclusive `flock` on `<out_dir>/.w2vkit-run.lock`, which holds the owner's PID.

    The kernel drops the lock when its process dies, however it dies, so a lock left by a killed
    run is simply taken over; a live owner is named in the refusal. A directory the lock created
    is removed again on release if nothing else was written to it.
    """

    def __init__(self, out_dir: Path, *, enabled: bool = True) -> None:
        self.path = Path(out_dir) / LOCK
        self.enabled = enabled  # False: a no-op (DDP ranks other than 0 write nothing)
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> RunLock:
        if not self.enabled:
            return self
        self._created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise RunLocked(
                    f"{self.path.parent} is in use by another w2vkit run (PID {owner}); wait for "
                    "it to finish or stop it, or choose another train.out_dir"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the owner released (and removed) it between our open and flock
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # before closing: nobody can lock it in between
            os.close(self._fd)  # closing drops the flock
            self._fd = None
            if self._created and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()  # a start that failed before writing leaves no trace

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def start_run_files(out_dir: Path, config_text: str, resumed_step: int | None) -> int:
    """At the real start of a run: write config.yaml; on resume, drop the log records past the
    resumed update (written between the last save and a crash); on a fresh start, remove an
    earlier run's checkpoints and log (`resume_point` allows that only with --overwrite).
    Returns the number of log records dropped."""
    out_dir = Path(out_dir)
    (out_dir / CONFIG).write_text(config_text, encoding="utf-8")
    log = out_dir / LOG
    if resumed_step is None:  # fresh (in a used directory only with --overwrite): a clean slate
        for old in [*checkpoints(out_dir), log]:  # checkpoint_failed.pt stays for inspection
            old.unlink(missing_ok=True)
        return 0
    if not log.is_file():
        return 0
    kept, dropped = [], 0
    for line in log.read_text(encoding="utf-8").splitlines():
        step = _logged_step(line)
        if step is not None and step > resumed_step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = log.with_name(f".{log.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        os.replace(tmp, log)
    return dropped


def _logged_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["num_updates"])
    except (ValueError, KeyError, TypeError):
        return None


__all__ = ["CONFIG", "LOCK", "LOG", "RunLock", "RunLocked", "start_run_files"]
