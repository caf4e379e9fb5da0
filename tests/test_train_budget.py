"""`train.max_minutes`: the loop times its first updates, plans the run, fits the LR and Gumbel
temperature schedules to the plan, stops with a checkpoint, and resumes with the same plan. The
clock is replaced by one that moves 6 s per reading (the budget reads it once per update)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import (
    TOY,
    TemperatureRecorder,
    make_manifest,
    random_rows,
    toy_config,
    toy_state,
    toy_train,
    update,
)

from w2vkit.config import ConfigError
from w2vkit.pretrain.registry import build_config
from w2vkit.pretrain.wav2vec2 import pretraining_objective
from w2vkit.train import checkpoint, loop
from w2vkit.train.config import load_layers

BUDGET = ("train.max_steps=0", "train.max_minutes=2", "train.log_interval=1")


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("tones"))


@pytest.fixture
def six_seconds_per_update(monkeypatch):
    clock = itertools.count(0.0, 6.0)
    monkeypatch.setattr(loop, "_now", lambda: next(clock))


def _train_lines(out_dir: Path) -> list[dict]:
    lines = (out_dir / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


def test_the_budget_plans_the_run_and_the_lr_schedule_ends_with_it(
    manifest_dir, tmp_path, capsys, six_seconds_per_update
):
    state, reason = toy_train(manifest_dir, tmp_path, *BUDGET)
    # 1 untimed update + 10 timed at 6 s: 66 s used, 54 s left = 9 more updates.
    assert reason == "max_minutes" and state.step == state.planned_steps == 20
    assert state.train_seconds == 120.0
    assert (
        "time budget 2 min: 6 s per update over 10 updates, so 20 updates in all; the schedules end there"
        in (capsys.readouterr().out)
    )
    lr = {r["num_updates"]: r["lr"] for r in _train_lines(tmp_path)}
    assert lr[5] == pytest.approx(0.01, rel=1e-6)  # no length before the plan: flat (no warmup)
    for step in range(12, 21):  # after it: linear decay to 0 at update 20
        assert lr[step] == pytest.approx(0.01 * (1 - step / 20), abs=1e-9), step
    saved = checkpoint.load(tmp_path / checkpoint.LAST)["progress"]
    assert (saved["step"], saved["planned_steps"], saved["train_seconds"]) == (20, 20, 120.0)


def test_a_budget_stop_resumes_with_the_same_plan(manifest_dir, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    clock = itertools.count(0.0, 6.0)
    monkeypatch.setattr(loop, "_now", lambda: next(clock))
    done, _ = toy_train(
        manifest_dir,
        straight,
        *BUDGET,
        "train.save_interval_steps=15",
        "train.keep_interval_checkpoints=0",
    )
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (interval,) = straight.glob("checkpoint_*_15.pt")
    shutil.copy(interval, resumed / checkpoint.LAST)
    clock = itertools.count(1000.0, 6.0)  # another session: only durations count
    monkeypatch.setattr(loop, "_now", lambda: next(clock))
    again, reason = toy_train(manifest_dir, resumed, *BUDGET)
    assert reason == "max_minutes" and again.step == 20 and again.schedule.total_steps == 20
    for name, value in done.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[name]), name

    def timeless(records):  # throughput is measured with the real clock
        return [
            {k: v for k, v in r.items() if k not in ("ups", "audio_sec_per_sec", "data_wait_frac")}
            for r in records
        ]

    assert timeless(_train_lines(resumed)) == timeless(_train_lines(straight)[15:])


def test_time_running_out_before_the_plan_stops_after_the_update_in_progress(
    manifest_dir, tmp_path, six_seconds_per_update
):
    state, reason = toy_train(manifest_dir, tmp_path, "train.max_minutes=0.5", "train.max_steps=50")
    # 30 s are used up after update 5; update 6 was under way, then the run stops.
    assert reason == "max_minutes" and state.step == 6 and state.planned_steps == 0
    assert checkpoint.load(tmp_path / checkpoint.LAST)["progress"]["step"] == 6


def test_max_steps_caps_the_plan(manifest_dir, tmp_path, six_seconds_per_update):
    state, reason = toy_train(manifest_dir, tmp_path, "train.max_minutes=60", "train.max_steps=14")
    assert state.planned_steps == 14 and state.step == 14 and state.schedule.total_steps == 14
    assert reason == "max_steps"


def test_the_plan_fits_the_gumbel_temperature_schedule():
    cfg = toy_config(
        "model.quantizer.temperature_start=2.0",
        "model.quantizer.temperature_decay=0.5",
        "model.quantizer.temperature_end=0.1",
    )
    torch.manual_seed(0)
    model = TemperatureRecorder(cfg.model)
    state = toy_state(cfg, model=model)
    objective = pretraining_objective(cfg.loss, cfg.model.quantizer, nominal_steps=40)
    objective.plan(20)  # half the configured length: the temperature decays twice as fast
    for k in range(3):
        update(state, [random_rows(2, 8000, k)], objective, cfg)
    assert model.temperatures == pytest.approx([2.0, 2.0 * 0.25, 2.0 * 0.25**2])


def test_a_budget_alone_is_a_valid_stop_condition_and_a_negative_one_is_not():
    cfg = build_config(load_layers(None, ["train.max_steps=0", "train.max_minutes=30"]))
    assert cfg.total_steps == 0 and cfg.train.max_minutes == 30
    with pytest.raises(ConfigError, match="train.max_minutes"):
        build_config(load_layers(None, ["train.max_minutes=-1"]))


def test_the_loop_fits_the_objective_to_the_plan(manifest_dir, tmp_path, six_seconds_per_update):
    planned: list[int] = []
    objective = dataclasses.replace(TOY, plan=planned.append)
    state, _ = toy_train(manifest_dir, tmp_path, *BUDGET, objective=objective)
    assert planned == [20] == [state.planned_steps]


@pytest.mark.parametrize(
    ("reason", "status"),
    [("max_steps", 0), ("max_epochs", 0), ("max_minutes", 0), ("nonfinite", 1), ("sigint", 130),
     ("sigterm", 143)],
)  # fmt: skip
def test_each_stop_reason_has_its_exit_status(reason, status):
    assert loop.exit_status(reason) == status and type(loop.exit_status(reason)) is int
