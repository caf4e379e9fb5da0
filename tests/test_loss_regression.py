"""Loss regression: the first logged losses of a seeded tiny pretraining run equal the stored ones.

A change that moves them (masking, negatives, init order, loss, optimizer, data order) shows up here
even when every unit test still passes. If the change is intended, regenerate the fixture and say
why in the commit:

    W2VKIT_WRITE_LOSS_FIXTURE=1 pytest tests/test_loss_regression.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import TINY_YAML, make_manifest

from w2vkit import cli

FIXTURE = Path(__file__).parent / "fixtures" / "loss_regression" / "tiny.json"
OVERRIDES = [
    "data.min_samples=4000",
    "data.max_samples=8000",
    "data.max_batch_samples=32000",
    "optim.warmup_steps=2",
    "train.log_interval=1",
    "train.max_steps=5",
    "train.validate_interval_steps=0",
    "train.seed=3",
]
# fp32 on CPU is deterministic for a given torch build; other builds and CPUs may reorder sums.
RELATIVE_TOLERANCE = 1e-4


def _train_losses(tmp_path: Path) -> list[float]:
    manifest = make_manifest(tmp_path / "data")
    out_dir = tmp_path / "run"
    argv = ["pretrain", TINY_YAML, f"data.manifest_dir={manifest}", f"train.out_dir={out_dir}"]
    assert cli.main([*argv, *OVERRIDES]) == 0
    records = [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["num_updates"] for r in train] == [1, 2, 3, 4, 5]
    return [r["loss"] for r in train]


def test_first_losses_of_a_seeded_tiny_run_match_the_fixture(tmp_path):
    losses = _train_losses(tmp_path)
    if os.environ.get("W2VKIT_WRITE_LOSS_FIXTURE") == "1":
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        record = {"config": "configs/pretrain/tiny.yaml", "overrides": OVERRIDES, "loss": losses}
        FIXTURE.write_text(json.dumps(record, indent=2) + "\n")
    stored = json.loads(FIXTURE.read_text())
    assert stored["overrides"] == OVERRIDES, "the recipe changed: regenerate the fixture"
    assert losses == pytest.approx(stored["loss"], rel=RELATIVE_TOLERANCE)
    assert len(set(losses)) == len(losses)  # the run trains: no two updates log the same loss
