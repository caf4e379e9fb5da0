"""Faults 17, 18: a stopped rank, and shutting down a 2-node run (two torchrun agents on one host).

Nothing may be lost: the stopped rank is named within the configured timeout and the last
checkpoint stays loadable; a completed 2-node run exits 0 on both nodes, every time.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import fault_runs as runs
import pytest

from w2vkit.train import checkpoint

WORKER = str(Path(__file__).with_name("dist_worker.py"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return runs.make_manifest(tmp_path_factory.mktemp("tones"), num_files=16, valid_percent=0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1", **extra)


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


@pytest.mark.distributed
@pytest.mark.slow
def test_fault18_two_node_run_exits_cleanly_on_both_nodes(corpus, tmp_path):
    for attempt in range(2):
        out = tmp_path / f"run{attempt}"
        port = _free_port()
        nodes = [
            subprocess.Popen(
                _torchrun(
                    "--nnodes",
                    "2",
                    "--node_rank",
                    str(rank),
                    "--nproc_per_node",
                    "1",
                    "--rdzv_backend",
                    "c10d",
                    "--rdzv_endpoint",
                    f"127.0.0.1:{port}",
                    "--rdzv_id",
                    f"faults{attempt}",
                    WORKER,
                    str(out),
                    *runs.tiny_args(corpus, out, "train.max_steps=3"),
                ),
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
            for rank in (0, 1)
        ]
        outputs = [node.communicate(timeout=300)[0] for node in nodes]
        for rank, (node, text) in enumerate(zip(nodes, outputs, strict=True)):
            assert node.returncode == 0, f"node {rank}, attempt {attempt}:\n{text[-3000:]}"
            assert "terminate called" not in text and "FAILED" not in text
        assert checkpoint.load(out / checkpoint.LAST)["progress"]["step"] == 3


@pytest.mark.distributed
@pytest.mark.slow
def test_fault17_stopped_rank_is_named_within_the_timeout(corpus, tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "torchrun.log"
    start = time.monotonic()
    with log.open("w") as sink:
        launcher = subprocess.Popen(
            _torchrun(
                "--nproc_per_node", "2", "--master_port", str(_free_port()), WORKER, str(out),
                *runs.tiny_args(corpus, out, "train.max_steps=1000", "train.save_interval_steps=2",
                                "train.dist_timeout_minutes=0.1"),
            ),
            env=_env(STOP_RANK="1", STOP_AFTER_LINES="4"),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            while "stopped answering" not in log.read_text() and launcher.poll() is None:
                assert time.monotonic() - start < 180, log.read_text()[-3000:]
                time.sleep(0.2)
            elapsed = time.monotonic() - start
        finally:
            stopped = out / "stopped.pid"
            if stopped.is_file():  # as the scheduler would: torchrun waits 30 s before SIGKILL
                os.kill(int(stopped.read_text()), signal.SIGKILL)
            launcher.wait(timeout=120)
    text = log.read_text()
    assert launcher.returncode != 0
    assert re.search(
        r"w2vkit pretrain: rank 0: \w+ waited 0\.1 min for the other processes; rank\(s\) 1 "
        r"stopped answering: a rank was stopped, died or hangs \(see its log\); "
        r"train\.dist_timeout_minutes sets this wait",
        text,
    ), text[-3000:]
    assert elapsed < 120  # not the 30 minutes of a fixed timeout
    saved = checkpoint.load(out / checkpoint.LAST)  # the last save is whole
    assert saved["progress"]["step"] >= 2 and saved["progress"]["step"] % 2 == 0
