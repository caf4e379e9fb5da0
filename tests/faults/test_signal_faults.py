"""Fault 16: SIGTERM to the whole process group (SLURM `scancel`, systemd stop) with DataLoader
workers. The workers ignore it, the training process saves and exits 143; nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fault_runs as runs
import pytest

from w2vkit.train import checkpoint, loop, rundir


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return runs.make_manifest(tmp_path_factory.mktemp("tones"), num_files=12, valid_percent=0.25)


@pytest.mark.slow
def test_fault16_sigterm_to_the_process_group_saves_and_exits_cleanly(corpus, tmp_path):
    for attempt in range(2):
        out = tmp_path / f"run{attempt}"
        args = runs.tiny_args(corpus, out, "train.max_steps=100000", "data.num_workers=2")
        run = subprocess.Popen(
            [sys.executable, "-m", "w2vkit", *args],
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, as under a batch scheduler
        )
        log = out / rundir.LOG
        deadline = time.monotonic() + 120
        while not (log.is_file() and log.read_text().count("\n") >= 3):
            assert run.poll() is None and time.monotonic() < deadline, run.stdout.read()
            time.sleep(0.1)
        os.killpg(run.pid, signal.SIGTERM)  # the training process and both workers
        output = run.communicate(timeout=120)[0]
        assert run.returncode == 143, output[-3000:]  # 128 + SIGTERM, after saving
        assert "stopped by SIGTERM at update" in output and "exited unexpectedly" not in output
        saved = checkpoint.load(out / checkpoint.LAST)
        assert saved["progress"]["step"] >= 3
        assert [r["num_updates"] for r in runs.records(out)][-1] <= saved["progress"]["step"]


def test_fault16_sigterm_during_the_final_validation_still_saves(corpus, tmp_path, monkeypatch):
    """The final validation and save run under the loop's handler, not the one before the run."""
    real_evaluate = loop.evaluate
    outer = []

    def evaluate_then_sigterm(*args, **kwargs):
        record = real_evaluate(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would, mid-way through the end
        return record

    monkeypatch.setattr(loop, "evaluate", evaluate_then_sigterm)
    previous = signal.signal(signal.SIGTERM, lambda *_: outer.append("outer handler ran"))
    try:
        assert runs.pretrain(corpus, tmp_path / "run", "train.max_steps=3") == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert outer == []  # the signal reached the loop's handler: under the default one, death
    saved = checkpoint.load(tmp_path / "run" / checkpoint.LAST)
    assert saved["progress"]["step"] == 3 and saved["metrics"]["valid"] is not None
