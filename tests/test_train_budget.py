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
from w2vkit.train import budget, checkpoint
from w2vkit.train.config import load_layers
from w2vkit.train.signals import exit_status
from w2vkit.train.state import Plan

BUDGET = ("train.max_steps=0", "train.max_minutes=2", "train.log_interval=1")


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("tones"))


@pytest.fixture
def six_seconds_per_update(monkeypatch):
    clock = itertools.count(0.0, 6.0)
    monkeypatch.setattr(budget, "_now", lambda: next(clock))


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
    monkeypatch.setattr(budget, "_now", lambda: next(clock))
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
    monkeypatch.setattr(budget, "_now", lambda: next(clock))
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
    objective.plan(lambda step: step / 20)  # a plan of half the configured length: twice as fast
    for k in range(3):
        update(state, [random_rows(2, 8000, k)], objective, cfg)
    assert model.temperatures == pytest.approx([2.0, 2.0 * 0.25, 2.0 * 0.25**2])


def test_a_budget_alone_is_a_valid_stop_condition_and_a_negative_one_is_not():
    cfg = build_config(load_layers(None, ["train.max_steps=0", "train.max_minutes=30"]))
    assert cfg.total_steps == 0 and cfg.train.max_minutes == 30
    with pytest.raises(ConfigError, match="train.max_minutes"):
        build_config(load_layers(None, ["train.max_minutes=-1"]))


def test_the_loop_fits_the_objective_to_the_plan(manifest_dir, tmp_path, six_seconds_per_update):
    planned: list = []
    objective = dataclasses.replace(TOY, plan=planned.append)
    state, _ = toy_train(manifest_dir, tmp_path, *BUDGET, objective=objective)
    assert len(planned) == 1 and state.planned_steps == 20
    assert [planned[0](k) for k in (0, 11, 15, 20)] == pytest.approx([0.0, 0.55, 0.75, 1.0])


@pytest.mark.parametrize(
    ("reason", "status"),
    [("max_steps", 0), ("max_epochs", 0), ("max_minutes", 0), ("nonfinite", 1), ("sigint", 130),
     ("sigterm", 143)],
)  # fmt: skip
def test_each_stop_reason_has_its_exit_status(reason, status):
    assert exit_status(reason) == status and type(exit_status(reason)) is int


def _paced(monkeypatch, seconds_of_update, first_step: int = 0) -> None:
    """A clock on which update k (counted over the run) takes `seconds_of_update(k)` seconds; the
    budget reads it once when the session starts and once after each update."""
    readings = itertools.count(first_step)
    now = [0.0]

    def clock() -> float:
        update = next(readings)
        now[0] += seconds_of_update(update) if update > first_step else 0.0
        return now[0]

    monkeypatch.setattr(budget, "_now", clock)


def _follows_the_plan_without_a_jump(out_dir: Path, lr: dict[int, float]) -> list[tuple]:
    """The logged LR of every update after the first plan against the hand formula: linear decay to
    0 at the planned end, re-anchored at each re-plan at the LR it had reached. Returns the plan
    history (from the checkpoint)."""
    segments = checkpoint.load(out_dir / checkpoint.LAST)["progress"]["plan"]["segments"]
    start, _, end = segments[0]
    for step in range(start + 1, segments[1][0] + 1 if len(segments) > 1 else end + 1):
        assert lr[step] == pytest.approx(0.01 * (1 - step / end), abs=1e-9), step
    for i, (start, _, end) in enumerate(segments[1:], 1):
        last = segments[i + 1][0] if i + 1 < len(segments) else end
        for step in range(start + 1, last + 1):
            expected = lr[start] * (end - step) / (end - start)
            assert lr[step] == pytest.approx(expected, abs=1e-9), (step, segments)
    assert lr[max(lr)] == pytest.approx(0.0, abs=1e-12)  # the schedule ended with the run
    return segments


@pytest.mark.parametrize(
    ("name", "seconds_of_update"),
    [
        ("first 15 updates 3x slower", lambda k: 3.0 if k <= 15 else 1.0),
        ("3x slower from update 60", lambda k: 1.0 if k <= 60 else 3.0),
    ],
)
def test_a_budget_ends_within_5_percent_whether_the_machine_speeds_up_or_slows_down(
    manifest_dir, tmp_path, monkeypatch, capsys, name, seconds_of_update
):
    _paced(monkeypatch, seconds_of_update)
    state, reason = toy_train(manifest_dir, tmp_path, *BUDGET)
    # A plan that ran out: the schedules ended with the run, inside the budget (+- 5 %).
    assert reason == "max_minutes" and state.step == state.planned_steps, name
    assert 114.0 <= state.train_seconds <= 120.0, (name, state.train_seconds, state.step)
    lr = {r["num_updates"]: r["lr"] for r in _train_lines(tmp_path)}
    segments = _follows_the_plan_without_a_jump(tmp_path, lr)
    assert len(segments) >= 2, segments  # it did re-plan
    out = capsys.readouterr().out
    assert f"so {segments[-1][2]} updates in all (were {segments[-2][2]})" in out


def test_a_resumed_budget_goes_on_with_the_same_plan_and_re_plans(
    manifest_dir, tmp_path, monkeypatch
):
    def seconds_of_update(k: int) -> float:  # slow at first, then fast, then slower again
        return 3.0 if k <= 15 else 1.0 if k <= 50 else 2.0

    straight = tmp_path / "straight"
    _paced(monkeypatch, seconds_of_update)
    keep = ("train.save_interval_steps=40", "train.keep_interval_checkpoints=0")
    done, _ = toy_train(manifest_dir, straight, *BUDGET, *keep)
    saved = checkpoint.load(next(straight.glob("checkpoint_*_40.pt")))["progress"]
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(next(straight.glob("checkpoint_*_40.pt")), resumed / checkpoint.LAST)
    _paced(monkeypatch, seconds_of_update, first_step=40)  # the same machine, a new session
    again, reason = toy_train(manifest_dir, resumed, *BUDGET)
    assert reason == "max_minutes" and again.step == done.step
    assert again.plan == done.plan and again.train_seconds == done.train_seconds
    assert len(done.plan.segments) > len(saved["plan"]["segments"])  # re-planned after update 40
    for key, value in done.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key
    lr = {r["num_updates"]: r["lr"] for r in _train_lines(straight)}
    assert {r["num_updates"]: r["lr"] for r in _train_lines(resumed)} == {
        k: v for k, v in lr.items() if k > 40
    }


def test_the_temperature_follows_a_re_plan_without_a_jump():
    cfg = toy_config(
        "model.quantizer.temperature_start=2.0",
        "model.quantizer.temperature_decay=0.9",
        "model.quantizer.temperature_end=0.01",
    )
    torch.manual_seed(0)
    model = TemperatureRecorder(cfg.model)
    state = toy_state(cfg, model=model)
    objective = pretraining_objective(cfg.loss, cfg.model.quantizer, nominal_steps=40)
    # Planned 20 updates, then at update 10 re-planned to 40: half the run was done there.
    objective.plan(Plan(20, [(0, 0.0, 20), (10, 0.5, 40)]).progress)
    for k in range(14):
        update(state, [random_rows(2, 8000, k)], objective, cfg)
    progress = [k / 20 for k in range(11)] + [0.5 + 0.5 * (k - 10) / 30 for k in range(11, 14)]
    assert model.temperatures == pytest.approx([2.0 * 0.9 ** (40 * p) for p in progress])


def test_a_budget_shorter_than_the_warm_up_fits_the_warm_up_to_the_plan(
    manifest_dir, tmp_path, capsys, six_seconds_per_update
):
    state, reason = toy_train(manifest_dir, tmp_path, *BUDGET, "optim.warmup_steps=30")
    # 20 updates planned (as above) against 30 of warm-up: fitted as if 120 long, the LR peaks a
    # quarter of the way through and decays to 0 at update 20.
    assert reason == "max_minutes" and state.step == 20 and state.plan.length == 120
    assert (
        "optim.warmup_steps=30 is more than 25% of the plan: the schedules are fitted to the plan "
        "as if it were 120 updates long, so the LR peaks 25% of the way through"
    ) in capsys.readouterr().out
    lr = {r["num_updates"]: r["lr"] for r in _train_lines(tmp_path)}
    assert lr[5] == pytest.approx(0.01 * 5 / 30)  # before the plan: the configured warm-up
    for step in range(12, 21):  # update 11 + k stands at 11 + k * 109 / 9 on the 120-long schedule
        at = 11 + (step - 11) * 109 / 9
        want = 0.01 * at / 30 if at <= 30 else 0.01 * (1 - (at - 30) / 90)
        assert lr[step] == pytest.approx(want, abs=1e-9), step
    assert lr[20] == 0.0


def test_a_non_finite_budget_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        build_config(load_layers(None, ["train.max_minutes=inf"]))
    assert str(err.value) == (
        "train.max_minutes: must be a finite number of minutes (0: no budget), got inf"
    )


def test_a_run_that_ends_inside_its_warm_up_says_so(manifest_dir, tmp_path, capsys):
    state, reason = toy_train(manifest_dir, tmp_path, "train.max_steps=4", "optim.warmup_steps=10")
    assert reason == "max_steps" and state.step == 4
    assert (
        "note: the run ended inside its LR warm-up (at update 4 of optim.warmup_steps=10): the LR "
        "never reached optim.lr. Train longer, or lower optim.warmup_steps"
    ) in capsys.readouterr().out
    toy_train(manifest_dir, tmp_path / "long", "train.max_steps=4", "optim.warmup_steps=4")
    assert "inside its LR warm-up" not in capsys.readouterr().out
