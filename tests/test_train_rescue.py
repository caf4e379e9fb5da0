"""`train.on_stuck`: rescue rolls back to the right checkpoint, applies and records the change and
resumes exactly; warn goes on; stop saves and exits 3. The stuck run and the collapse are injected
through the health monitor's inputs (thresholds that always hold, a forced code perplexity), so
the tiny runs are short."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import TINY_YAML

from w2vkit import cli
from w2vkit.config import ConfigError
from w2vkit.model.config import QuantizerConfig
from w2vkit.pretrain import wav2vec2_health
from w2vkit.pretrain.registry import build_config
from w2vkit.pretrain.schedule import gumbel_temperature
from w2vkit.pretrain.wav2vec2_health import HealthMonitor
from w2vkit.report.build import build_report, surviving
from w2vkit.train import checkpoint, rescue
from w2vkit.train.config import load_layers


class _AtChance(HealthMonitor):
    """Finds `loss_at_chance` at update 6 whatever the loss (6-update window, any loss counts)."""

    def __init__(self, num_negatives: int, num_groups: int, **_: object) -> None:
        super().__init__(num_negatives, num_groups, plateau_updates=6, plateau_tolerance_bits=1e9)


class _Collapsed(HealthMonitor):
    """Sees code perplexity 1 from update 10 on: the evidence starts after update 9 (the newest
    checkpoint at or before it: update 8) and the finding comes with the third record, at 14."""

    def __init__(self, num_negatives: int, num_groups: int, **_: object) -> None:
        super().__init__(num_negatives, num_groups, plateau_updates=10**9)

    def observe(self, record: dict):
        if record.get("split") == "train" and record["num_updates"] >= 10:
            record = {**record, "code_perplexity": 1.0}
        return super().observe(record)


def _run(manifest_dir: Path, out_dir: Path, *overrides: str) -> int:
    return cli.main(
        [
            "pretrain",
            TINY_YAML,
            f"data.manifest_dir={manifest_dir}",
            "data.min_samples=4000",
            "data.max_samples=8000",
            "data.max_batch_samples=32000",
            "train.log_interval=2",
            "train.save_interval_steps=4",
            "train.keep_interval_checkpoints=0",
            "train.validate_interval_steps=0",
            "optim.warmup_steps=5",
            "optim.total_steps=20",
            "model.quantizer.temperature_decay=0.99",
            f"train.out_dir={out_dir}",
            *overrides,
        ]
    )


def _train_records(out_dir: Path) -> list[dict]:
    lines = (out_dir / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("split") == "train"]


def test_a_run_at_chance_is_rolled_back_to_its_initial_state_and_anneals_faster(
    manifest_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(wav2vec2_health, "HealthMonitor", _AtChance)
    assert _run(manifest_dir, tmp_path, "train.on_stuck=rescue", "train.max_steps=10") == 0
    out = capsys.readouterr().out
    saved = checkpoint.load(tmp_path / checkpoint.LAST)
    decay = 0.99
    # The window began at update 0, before every interval checkpoint: the initial state.
    assert saved["progress"]["rescues"] == [
        {
            "update": 6,
            "finding": "loss_at_chance",
            "rolled_back_to": 0,
            "change": "Gumbel temperature annealed per update (decay 0.99), not stretched to the plan",
        },
        {
            "update": 6,
            "finding": "loss_at_chance",
            "rolled_back_to": 0,
            "change": f"Gumbel temperature annealed per update x2 (decay {decay**2:.6g}), not "
            "stretched to the plan",
        },
        {
            "update": 6,
            "finding": "loss_at_chance",
            "rolled_back_to": 0,
            "change": f"Gumbel temperature annealed per update x4 (decay {decay**4:.6g}), not "
            "stretched to the plan",
        },
    ]
    assert (
        "rescue 1 of 3 at update 6 for [loss_at_chance]: rolled back to update 0 (the initial "
        "state); changed: Gumbel temperature annealed per update (decay 0.99)" in out
    )
    assert (
        "rescue: none left for [loss_at_chance] at update 6 (3 of 3 used); going on as "
        "train.on_stuck=warn would" in out
    )
    # Each pass logs updates 2, 4, 6 again; the fourth goes on to 10 at four times the pace.
    records = _train_records(tmp_path)
    assert [r["num_updates"] for r in records] == [2, 4, 6] * 4 + [8, 10]
    quantizer = QuantizerConfig(temperature_decay=decay)
    for record, pace in zip(records[2::3][:4], (1, 1, 2, 4), strict=True):
        # The record at update 6 averages the temperatures of updates 5 and 6 (4 and 5 done).
        expected = (
            gumbel_temperature(4 * pace, quantizer) + gumbel_temperature(5 * pace, quantizer)
        ) / 2
        assert record["temp"] == pytest.approx(expected, rel=1e-6)
    # The rolled-back weights are the initial state's: the first update after each rollback
    # starts from them, so the record at update 2 of the second pass equals the first's loss
    # where the temperature has not changed yet (pace 1 at updates 1-2 in both passes).
    assert records[3]["loss"] == records[0]["loss"]
    # The report lists the rescues and draws the updates the run kept (the last pass).
    report = build_report(tmp_path, tmp_path / "report", curves_only=True)
    section = next(s for s in report.sections if s.title == "Rescues")
    assert section.table is not None and section.table[1:] == [
        ["6", "loss_at_chance", "0", r["change"]] for r in saved["progress"]["rescues"]
    ]
    kept = surviving(records)
    assert [r["num_updates"] for r in kept] == [2, 4, 6, 8, 10] and kept[0] is records[9]


def test_a_collapse_rolls_back_to_the_checkpoint_before_its_streak_and_resumes_exactly(
    manifest_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(wav2vec2_health, "HealthMonitor", _Collapsed)
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _run(manifest_dir, straight, "train.on_stuck=rescue", "train.max_steps=20") == 0
    out = capsys.readouterr().out
    # The streak's first record is at 10: the interval checkpoint of update 8 (of epoch 3 here).
    assert re.search(
        r"rescue 1 of 3 at update 14 for \[codebook_collapse\]: rolled back to update 8 "
        r"\(checkpoint_\d+_8\.pt\); changed: loss\.diversity_weight 0\.1 -> 0\.2\n",
        out,
    )
    saved = checkpoint.load(straight / checkpoint.LAST)
    assert [
        (r["update"], r["rolled_back_to"], r["change"]) for r in saved["progress"]["rescues"]
    ] == [
        (14, 8, "loss.diversity_weight 0.1 -> 0.2"),
        (14, 8, "loss.diversity_weight 0.2 -> 0.4"),
        (14, 8, "loss.diversity_weight 0.4 -> 0.8"),
    ]
    # Stopped at 16 (after the rescues) and resumed: the same weights and records at 20.
    assert _run(manifest_dir, split, "train.on_stuck=rescue", "train.max_steps=16") == 0
    assert _run(manifest_dir, split, "train.on_stuck=rescue", "train.max_steps=20") == 0
    assert (
        "re-applied 3 rescue change(s): loss.diversity_weight 0.1 -> 0.2;"
        in capsys.readouterr().out
    )
    resumed = checkpoint.load(split / checkpoint.LAST)
    assert resumed["progress"]["rescues"] == saved["progress"]["rescues"]
    assert resumed["progress"]["step"] == saved["progress"]["step"] == 20
    for name, value in saved["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    keys = ("num_updates", "loss", "loss_0", "loss_1", "accuracy", "temp", "lr", "gnorm")
    assert [{k: r[k] for k in keys} for r in _train_records(split)[-2:]] == [
        {k: r[k] for k in keys} for r in _train_records(straight)[-2:]
    ]


def test_warn_goes_on_and_stop_saves_and_exits_3(manifest_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(wav2vec2_health, "HealthMonitor", _AtChance)
    assert _run(manifest_dir, tmp_path / "warn", "train.on_stuck=warn", "train.max_steps=8") == 0
    out = capsys.readouterr().out
    assert "health [loss_at_chance] at update 6" in out and "rescue" not in out
    warned = checkpoint.load(tmp_path / "warn" / checkpoint.LAST)
    assert warned["progress"]["step"] == 8 and warned["progress"]["rescues"] == []
    assert not (tmp_path / "warn" / rescue.INITIAL).exists()

    stop_dir = tmp_path / "stop"
    assert _run(manifest_dir, stop_dir, "train.on_stuck=stop", "train.max_steps=20") == 3
    out = capsys.readouterr().out
    assert (
        f"stopping (train.on_stuck=stop): health [loss_at_chance] at update 6; "
        f"{stop_dir / checkpoint.LAST} saved. Try: raise optim.lr or shorten optim.warmup_steps"
    ) in out
    assert "or train.on_stuck=rescue" in out and "finished (stuck) at update 6" in out
    assert checkpoint.load(stop_dir / checkpoint.LAST)["progress"]["step"] == 6


def test_the_healthy_checkpoint_is_the_newest_interval_one_at_or_before_the_window(tmp_path):
    for step in (4, 8, 12):
        torch.save({"progress": {"step": step}}, tmp_path / checkpoint.interval_name(1, step))
    torch.save({"progress": {"step": 12}}, tmp_path / checkpoint.LAST)
    assert rescue.healthy_checkpoint(tmp_path, 11).name == "checkpoint_1_8.pt"
    assert rescue.healthy_checkpoint(tmp_path, 12).name == "checkpoint_1_12.pt"
    assert rescue.healthy_checkpoint(tmp_path, 3) == tmp_path / rescue.INITIAL


def test_on_stuck_takes_only_its_three_values():
    cfg = build_config(load_layers("cpu", []))
    assert cfg.train.on_stuck == "rescue"  # the budget recipe rescues itself
    assert build_config(load_layers("tiny", [])).train.on_stuck == "warn"
    with pytest.raises(ConfigError, match="train.on_stuck"):
        build_config(load_layers("tiny", ["train.on_stuck=retry"]))
