"""Checkpoint files: atomic writes that survive SIGKILL, weights_only loads, pruning, RNG capture."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import toy_config, toy_state

from w2vkit.data.sampler import BucketBatchSampler
from w2vkit.train import checkpoint, dist
from w2vkit.train.state import Plan

CPU = torch.device("cpu")

SRC = str(Path(__file__).resolve().parents[1] / "src")

# A child that rewrites checkpoint_last.pt forever with a ~32 MB payload whose content names the
# iteration, announcing each write before it starts.
WRITER = """
import sys, torch
from pathlib import Path
from w2vkit.train import checkpoint
path = Path(sys.argv[1])
i = 0
while True:
    payload = {"format": checkpoint.FORMAT, "i": i, "blob": torch.full((8_000_000,), float(i))}
    print(f"writing {i}", flush=True)
    checkpoint.save_atomic(payload, path)
    i += 1
"""


def test_sigkill_during_a_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / checkpoint.LAST
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        while child.stdout.readline().strip() != "writing 2":  # two complete checkpoints exist
            assert child.poll() is None, "the writer died"
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob(".*.tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.0005)  # kill as soon as the third write has opened its temporary file
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    leftovers = list(tmp_path.glob(".*.tmp-*"))
    assert leftovers, "the kill did not interrupt a write, so the test proved nothing"
    payload = checkpoint.load(path)  # the previous, complete write
    assert payload["i"] == 1
    assert torch.equal(payload["blob"], torch.full((8_000_000,), 1.0))
    assert checkpoint.remove_stale_temp_files(tmp_path) == leftovers


def test_save_load_round_trip_is_weights_only(tmp_path):
    payload = {
        "format": checkpoint.FORMAT,
        "model": {"w": torch.randn(3)},
        "config": {"a": [1, 2]},
        "progress": {"step": 4, "best_valid_loss": float("inf")},
    }
    checkpoint.save_atomic(payload, tmp_path / "c.pt")
    loaded = checkpoint.load(tmp_path / "c.pt")
    assert torch.equal(loaded["model"]["w"], payload["model"]["w"]) and loaded["config"] == {
        "a": [1, 2]
    }
    assert list(tmp_path.iterdir()) == [tmp_path / "c.pt"]  # no temp file left behind


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_load_refuses_pickled_code_and_foreign_files(tmp_path):
    torch.save({"format": checkpoint.FORMAT, "x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot be read"):
        checkpoint.load(tmp_path / "evil.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="format"):
        checkpoint.load(tmp_path / "other.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "other.pt").read_bytes()[:40])
    with pytest.raises(ValueError, match="cut.pt"):
        checkpoint.load(tmp_path / "cut.pt")


def test_prune_keeps_the_newest_interval_checkpoints(tmp_path):
    for epoch, step in [(1, 100), (2, 200), (3, 300), (10, 1000)]:
        (tmp_path / checkpoint.interval_name(epoch, step)).write_bytes(b"x")
    (tmp_path / checkpoint.LAST).write_bytes(b"x")
    removed = checkpoint.prune_interval_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["checkpoint_1_100.pt", "checkpoint_2_200.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_10_1000.pt",
        "checkpoint_3_300.pt",
        "checkpoint_last.pt",
    ]
    assert checkpoint.prune_interval_checkpoints(tmp_path, keep=0) == []


def test_rng_capture_restores_every_stream(tmp_path):
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = checkpoint.capture_rng(generator)
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "rng": state}, tmp_path / "r.pt")

    def draw():
        return (
            torch.rand(3).tolist(),
            torch.rand(3, generator=generator).tolist(),
            np.random.rand(3).tolist(),
            [random.random() for _ in range(3)],
        )

    expected = draw()
    draw()  # move every stream on
    checkpoint.restore_rng(checkpoint.load(tmp_path / "r.pt")["rng"], generator)
    assert draw() == expected


def test_the_payload_round_trips_the_state_and_other_ranks_restore_zero_sums(monkeypatch):
    cfg = toy_config()

    def state():
        return toy_state(cfg, BucketBatchSampler(np.full(8, 100), max_batch_samples=400))

    saved = state()
    saved.step, saved.epoch, saved.best_metric = 7, 2, 1.25
    saved.best_rank, saved.best_step = (1.25, 3.0), 6
    saved.train_seconds = 90.5
    saved.plan = Plan(24, [(11, 11 / 24, 20), (16, 0.7, 22)], [6.0, 6.5])
    saved.window.add({"loss": torch.tensor(4.0), "sample_size": 8}, {"temp": 2.0})
    saved.window.num_updates, saved.window.audio_samples = 1, 32000.0
    payload = checkpoint.payload(saved, {"a": 1}, None, window=saved.window.all_reduced(CPU))
    assert payload["config"] == {"a": 1} and payload["format"] == checkpoint.FORMAT
    main = state()
    checkpoint.restore(main, payload)
    assert (main.step, main.epoch, main.best_metric) == (7, 2, 1.25)
    assert (main.best_rank, main.best_step) == ((1.25, 3.0), 6)
    assert (main.train_seconds, main.planned_steps) == (90.5, 22)
    assert main.plan == saved.plan and main.plan is not saved.plan
    assert main.window.state_dict() == saved.window.state_dict()
    # The window holds every rank's sums: rank 0 restores them, the others zeros (same keys, so
    # the next all-reduce lines up), or the first log line after a resume counts them N times.
    monkeypatch.setattr(dist, "is_main", lambda: False)
    other = state()
    checkpoint.restore(other, payload)
    assert other.window.state_dict() == {
        "sums": {"loss": 0.0, "sample_size": 0.0},
        "means": {"temp": 0.0},
        "num_micro_batches": 0,
        "num_updates": 1,
        "audio_samples": 0.0,
    }


def test_each_run_kind_writes_its_format_and_older_checkpoints_still_resume(tmp_path):
    cfg = toy_config()
    saved = toy_state(cfg, BucketBatchSampler(np.full(8, 100), max_batch_samples=400))
    saved.step, saved.best_metric, saved.best_rank, saved.best_step = 9, 40.0, (40.0, 20.0), 8
    window = saved.window.all_reduced(CPU)
    pre = checkpoint.payload(saved, {"loss": {}}, None, window=window)
    fine = checkpoint.payload(saved, {"ctc": {}}, None, window=window)
    assert (pre["format"], fine["format"]) == ("w2vkit.pretrain/1", "w2vkit.finetune/1")
    # A fine-tuning checkpoint of before: the pretraining format, the best under its old name.
    old = {**fine, "format": "w2vkit.pretrain/1"}
    old["progress"] = {k: v for k, v in fine["progress"].items() if not k.startswith("best")}
    old["progress"]["best_valid_loss"] = 40.0
    for name, payload in (("new.pt", fine), ("old.pt", old)):
        checkpoint.save_atomic(payload, tmp_path / name)
    again = toy_state(cfg, BucketBatchSampler(np.full(8, 100), max_batch_samples=400))
    checkpoint.restore(again, checkpoint.load(tmp_path / "new.pt"))
    assert (again.best_metric, again.best_rank, again.best_step) == (40.0, (40.0, 20.0), 8)
    older = toy_state(cfg, BucketBatchSampler(np.full(8, 100), max_batch_samples=400))
    checkpoint.restore(older, checkpoint.load(tmp_path / "old.pt"))
    assert (older.step, older.best_metric, older.best_rank, older.best_step) == (
        9,
        40.0,
        (40.0,),
        0,
    )
    checkpoint.save_atomic({"format": "w2vkit.other/1"}, tmp_path / "foreign.pt")
    with pytest.raises(checkpoint.CheckpointUnreadable) as err:
        checkpoint.load(tmp_path / "foreign.pt")
    assert str(err.value) == (
        f"checkpoint {tmp_path / 'foreign.pt'} has format 'w2vkit.other/1', expected "
        "'w2vkit.pretrain/1' or 'w2vkit.finetune/1'"
    )
