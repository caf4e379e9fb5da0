"""bench/train_step.py end to end on the tiny preset: w2vkit's trainer is timed, and a peer that
cannot run a setting is reported in the table and the JSON instead of stopping the benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_failing_peer_is_a_row_not_a_stop(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Traceback ...' >&2\necho 'RuntimeError: boom' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "W2VKIT_FAIRSEQ_PYTHON": str(fake)}
    command = [sys.executable, str(REPO / "bench" / "train_step.py"), "--preset", "tiny"]
    command += ["--batch", "2", "--seconds", "1", "--rounds", "2", "--steps", "2", "--warmup", "0"]
    run = subprocess.run(
        [*command, "--threads", "1", "--compare", "fairseq"],
        capture_output=True, text=True, env=env, timeout=240, check=False,
    )  # fmt: skip
    assert run.returncode == 3, run.stderr  # w2vkit ran, a peer failed: not 0, not w2vkit's 1
    assert " fairseq failed: RuntimeError: boom" in run.stdout
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["results"]["fairseq"] == {"error": "RuntimeError: boom"}
    w2vkit = report["results"]["w2vkit"]
    assert w2vkit["speedup_of_w2vkit"] == 1.0 and 0 < w2vkit["min_s"] <= w2vkit["median_s"]
    assert w2vkit["audio_sec_per_sec"] == 2 * 1.0 / w2vkit["median_s"]
    assert run.stderr.count("fairseq worker failed") == 1  # not retried in the second round


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(REPO / "bench" / "train_step.py"), "--preset", "tiny"]
    command += ["--threads", "1", "--warmup", "0", *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=240, check=False
    )


def test_a_failing_w2vkit_worker_exits_1_with_its_error():
    run = _bench("--batch", "2", "--seconds", "0.05", "--rounds", "1", "--steps", "1")
    assert run.returncode == 1
    assert "w2vkit worker failed" in run.stderr and "Traceback" in run.stderr


def test_find_batch_takes_the_largest_that_fits_and_profile_writes_the_top_ops(tmp_path):
    run = _bench("--seconds", "1", "--find-batch", "1", "3", "2")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {
        "benchmark": "find_batch", "batch": 3, "tried": {"3": "fits"},
    }  # fmt: skip
    table = tmp_path / "kernels.txt"
    run = _bench(
        "--batch", "2", "--seconds", "1", "--rounds", "1", "--steps", "1", f"--profile={table}"
    )
    assert run.returncode == 0, run.stderr
    assert "Self CPU" in table.read_text() and "aten::" in table.read_text()
