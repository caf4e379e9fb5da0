"""Resuming and starting runs through `w2vkit pretrain`: 20 updates straight equal 10 + resume + 10,
SIGTERM saves and exits cleanly, `--init-from` takes the source's model and weights."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import TINY_YAML, TOY, toy_train

from w2vkit import cli
from w2vkit.train import checkpoint


def _logged(out_dir: Path) -> dict:
    records = [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]
    keys = (
        "loss",
        "loss_0",
        "loss_1",
        "loss_2",
        "accuracy",
        "prob_perplexity",
        "code_perplexity",
        "temp",
        "lr",
        "gnorm",
    )
    return {(r["split"], r["num_updates"]): {k: r.get(k) for k in keys} for r in records}


def test_resume_continues_exactly(manifest_dir, tmp_path):
    common = [
        "pretrain",
        TINY_YAML,
        f"data.manifest_dir={manifest_dir}",
        "data.min_samples=4000",
        "data.max_samples=8000",
        "data.max_batch_samples=32000",
        "train.log_interval=5",
        "train.save_interval_steps=10",
        "train.keep_interval_checkpoints=1",
        "optim.warmup_steps=5",
        "optim.total_steps=20",
    ]
    assert cli.main([*common, f"train.out_dir={tmp_path / 'straight'}", "train.max_steps=20"]) == 0
    assert cli.main([*common, f"train.out_dir={tmp_path / 'split'}", "train.max_steps=10"]) == 0
    assert checkpoint.load(tmp_path / "split" / checkpoint.LAST)["progress"]["step"] == 10
    assert cli.main([*common, f"train.out_dir={tmp_path / 'split'}", "train.max_steps=20"]) == 0
    straight = checkpoint.load(tmp_path / "straight" / checkpoint.LAST)
    split = checkpoint.load(tmp_path / "split" / checkpoint.LAST)
    assert straight["progress"]["step"] == split["progress"]["step"] == 20
    # The resolved config is in the run directory and in every checkpoint, and they agree.
    assert yaml.safe_load((tmp_path / "straight" / "config.yaml").read_text()) == straight["config"]
    for name, value in straight["model"].items():
        assert torch.equal(value, split["model"][name]), name
    # Every random state too, numpy's and Python's included (reseeded at each update).
    a, b = straight["rng"], split["rng"]
    assert torch.equal(a["torch"], b["torch"]) and torch.equal(a["generator"], b["generator"])
    assert a["numpy"][0] == b["numpy"][0] and torch.equal(a["numpy"][1], b["numpy"][1])
    assert a["numpy"][2:] == b["numpy"][2:] and a["python"] == b["python"]
    logged_straight, logged_split = _logged(tmp_path / "straight"), _logged(tmp_path / "split")
    assert [k for k in logged_straight if k[0] == "train"] == [
        ("train", s) for s in (5, 10, 15, 20)
    ]
    for key, values in logged_straight.items():
        assert logged_split[key] == values, key
    assert list((tmp_path / "split").glob("checkpoint_*_20.pt"))
    # keep_interval_checkpoints pruned it
    assert not list((tmp_path / "split").glob("checkpoint_*_10.pt"))


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_and_exits_with_its_status(
    manifest_dir, tmp_path, capsys, sig, status
):
    log = tmp_path / "train_log.jsonl"
    handler_before = signal.getsignal(sig)

    def terminate_after_the_first_log_line():
        # The line is written inside the loop, so the loop's handler is installed by then. Without
        # a line in 60 s the thread gives up, and the test's timeout (pyproject) fails the run.
        deadline = time.monotonic() + 60.0
        while not (log.is_file() and log.read_text().count("\n") >= 1):
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        os.kill(os.getpid(), sig)

    killer = threading.Thread(target=terminate_after_the_first_log_line, daemon=True)
    killer.start()
    code = cli.main(
        [
            "pretrain",
            TINY_YAML,
            f"data.manifest_dir={manifest_dir}",
            "data.min_samples=4000",
            "data.max_samples=8000",
            "data.max_batch_samples=16000",
            "train.log_interval=2",
            "train.max_steps=200",
            f"train.out_dir={tmp_path}",
        ]
    )
    killer.join(timeout=5)
    assert code == status  # 128 + the signal number, as a shell reports it: `pretrain && x` stops
    out = capsys.readouterr().out
    assert f"stopped by {sig.name} at update" in out
    assert f"finished (stopped by {sig.name})" in out and "continue with the same command" in out
    # the loop put the previous handler back
    assert signal.getsignal(sig) == handler_before
    saved = checkpoint.load(tmp_path / checkpoint.LAST)
    assert 2 <= saved["progress"]["step"] < 200 and saved["config"]["train"]["max_steps"] == 200


def test_init_from_takes_the_model_and_weights_of_the_source(manifest_dir, tmp_path):
    common = [
        "pretrain",
        TINY_YAML,
        f"data.manifest_dir={manifest_dir}",
        "data.min_samples=4000",
        "data.max_samples=8000",
        "data.max_batch_samples=16000",
        "optim.warmup_steps=5",
    ]
    assert (
        cli.main(
            [
                *common,
                "model.transformer.ffn_dim=96",
                "train.max_steps=2",
                f"train.out_dir={tmp_path / 'source'}",
            ]
        )
        == 0
    )
    source = checkpoint.load(tmp_path / "source" / checkpoint.LAST)
    # tiny.yaml says `preset: tiny` (ffn_dim 128): the source's model wins, explicit keys still apply.
    assert (
        cli.main(
            [
                *common,
                "--init-from",
                str(tmp_path / "source" / checkpoint.LAST),
                "train.max_steps=1",
                "model.masking.time_prob=0.5",
                f"train.out_dir={tmp_path / 'continued'}",
            ]
        )
        == 0
    )
    continued = checkpoint.load(tmp_path / "continued" / checkpoint.LAST)
    model = continued["config"]["model"]
    assert model["transformer"]["ffn_dim"] == 96 and model["masking"]["time_prob"] == 0.5
    assert continued["config"]["train"]["init_from"].endswith("checkpoint_last.pt")
    # The first update runs at LR 0 (fairseq's warmup), so the weights are still the source's.
    for name, value in source["model"].items():
        assert torch.equal(continued["model"][name], value), name


def test_a_resumed_runs_numpy_and_python_random_states_equal_an_uninterrupted_runs(
    manifest_dir, tmp_path
):
    """A step that draws from numpy's and Python's global RNGs (as a third-party augmentation
    might): after 4 + resume + 4 updates every saved random state is the straight run's."""

    def drawing_step(model, batch, step, generator):
        np.random.rand(3)
        random.random()
        return TOY.step(model, batch, step, generator)

    objective = dataclasses.replace(TOY, step=drawing_step)
    every_4 = ("train.save_interval_steps=4", "train.keep_interval_checkpoints=0")
    toy_train(
        manifest_dir, tmp_path / "straight", "train.max_steps=8", *every_4, objective=objective
    )
    toy_train(manifest_dir, tmp_path / "split", "train.max_steps=4", *every_4, objective=objective)
    np.random.rand(5)  # whatever the process drew in between
    random.random()
    toy_train(manifest_dir, tmp_path / "split", "train.max_steps=8", *every_4, objective=objective)
    a = checkpoint.load(tmp_path / "straight" / checkpoint.LAST)["rng"]
    b = checkpoint.load(tmp_path / "split" / checkpoint.LAST)["rng"]
    assert a["numpy"][0] == b["numpy"][0] and torch.equal(a["numpy"][1], b["numpy"][1])
    assert a["numpy"][2:] == b["numpy"][2:] and a["python"] == b["python"]
    assert torch.equal(a["torch"], b["torch"]) and torch.equal(a["generator"], b["generator"])
