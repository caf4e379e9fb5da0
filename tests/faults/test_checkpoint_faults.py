"""Faults 9, 10: two runs in one directory, unreadable checkpoints, a full disk.

Nothing may be lost: the live run's files stay, the previous checkpoint stays whole and
loadable, and every refusal is one line naming the file (never advice to unpickle unsafely).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fault_runs as runs
import pytest
import torch

from w2vkit.train import checkpoint, rundir

HOLD_LOCK = """
import sys, time
from pathlib import Path
from w2vkit.train.rundir import RunLock
lock = RunLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return runs.make_manifest(tmp_path_factory.mktemp("tones"), num_files=8, valid_percent=0.0)


def _hold_lock(out_dir: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out_dir)], stdout=subprocess.PIPE, env=env, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_fault09_second_run_in_a_live_run_directory_is_refused(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = _hold_lock(out)
    try:
        live_temp = out / f".{checkpoint.LAST}.tmp-{holder.pid}"
        live_temp.write_bytes(b"half a checkpoint")
        assert runs.pretrain(corpus, out, "train.max_steps=2") == 2
        err = capsys.readouterr().err
        assert f"is in use by another w2vkit run (PID {holder.pid})" in err
        assert live_temp.read_bytes() == b"half a checkpoint"  # the live run's write survives
        assert not (out / checkpoint.LAST).exists() and not (out / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock and temp file are stale, the next run takes over and cleans up.
    assert runs.pretrain(corpus, out, "train.max_steps=2") == 0
    assert not live_temp.exists() and not (out / rundir.LOCK).exists()
    assert checkpoint.load(out / checkpoint.LAST)["progress"]["step"] == 2


def test_fault09_only_temp_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        stale = tmp_path / f".checkpoint_best.pt.tmp-{dead_pid}"
        alive = tmp_path / f".checkpoint_last.pt.tmp-{live.pid}"
        for p in (stale, alive):
            p.write_bytes(b"x")
        assert checkpoint.remove_stale_temp_files(tmp_path) == [stale]
        assert alive.exists() and not stale.exists()
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("zero", "is empty (0 bytes): its write was cut short"),
        ("truncated", "cannot be read: truncated or corrupt (not a complete zip archive)"),
        ("garbage", "cannot be read: corrupt (Unsupported operand"),
        ("code", "cannot be read: it needs code to load (Trying to load unsupported GLOBAL posix"),
    ],
)
def test_fault10_unreadable_checkpoint_is_one_line_naming_the_file(
    corpus, tmp_path, capsys, damage, expected
):
    out = tmp_path / "run"
    assert runs.pretrain(corpus, out, "train.max_steps=2") == 0
    capsys.readouterr()
    last = out / checkpoint.LAST
    good = last.read_bytes()
    if damage == "zero":
        last.write_bytes(b"")
    elif damage == "truncated":
        last.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        last.write_bytes(b"\xf6" * 4096)  # not a zip, and no pickle opcode
    else:
        torch.save({"format": checkpoint.FORMAT, "x": os.getcwd}, last)
    damaged = last.read_bytes()
    assert runs.pretrain(corpus, out, "train.max_steps=4") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(last) in err and expected in err, err
    assert "weights_only" not in err and "Traceback" not in err
    assert last.read_bytes() == damaged  # refused, not overwritten: nothing more is lost


def _fill_almost(directory: Path, keep_free: int) -> None:
    free = shutil.disk_usage(directory).free
    (directory / "ballast").write_bytes(b"\0" * max(free - keep_free, 0))


def test_fault10_disk_full_says_where_and_how_much_and_keeps_the_previous(tmp_path, monkeypatch):
    """ENOSPC from the file system (monkeypatched write: no privileges needed)."""
    path = tmp_path / checkpoint.LAST
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "w": torch.ones(10)}, path)
    real_open = open

    class FullFile:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 100_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FullFile(f) if ".tmp-" in str(file) and "w" in mode else f

    monkeypatch.setattr("builtins.open", full_open)
    big = {"format": checkpoint.FORMAT, "w": torch.ones(1_000_000)}  # 3.8 MiB of tensors
    with pytest.raises(checkpoint.DiskFullError) as caught:
        checkpoint.save_atomic(big, path)
    monkeypatch.undo()
    message = str(caught.value)
    assert message.startswith(f"disk full: writing {path} needs about 3.8 MiB, ")
    assert f"free on {tmp_path}; the previous {checkpoint.LAST} is intact" in message
    assert torch.equal(checkpoint.load(path)["w"], torch.ones(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.LAST]  # no temp file left


def test_fault10_disk_full_on_a_real_tiny_filesystem(tmp_path):
    """A 1 MiB tmpfs, where torch's zip writer fails with 'unexpected pos' (root only)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        path = mount / checkpoint.LAST
        checkpoint.save_atomic({"format": checkpoint.FORMAT, "w": torch.ones(10)}, path)
        with pytest.raises(checkpoint.DiskFullError, match=r"needs about 1\.9 MiB, .* free on"):
            checkpoint.save_atomic({"format": checkpoint.FORMAT, "w": torch.ones(500_000)}, path)
        assert torch.equal(checkpoint.load(path)["w"], torch.ones(10))
        assert [p.name for p in mount.iterdir()] == [checkpoint.LAST]
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
