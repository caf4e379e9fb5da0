"""An objective is a sibling module plus a registry entry: a toy objective defined in this file (a
config section, a model with an EMA teacher, a step function) trains through `w2vkit pretrain`,
checkpoints, resumes to the bit, shows its own columns on the console; wrong names are refused."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from w2vkit import cli
from w2vkit.config import check
from w2vkit.pretrain import registry
from w2vkit.pretrain.config import PretrainConfig
from w2vkit.pretrain.objective import PretrainObjective
from w2vkit.train import checkpoint
from w2vkit.train.diagnostics import Monitor, read_log
from w2vkit.train.metrics import LOOP_COLUMNS, Column
from w2vkit.train.state import Objective, StepOutput


@dataclass(kw_only=True)
class ToySection:
    target: float = 0.3
    ema_decay: float = 0.5

    def __post_init__(self) -> None:
        check(0 <= self.ema_decay < 1, "toy.ema_decay", f"must be in [0, 1), got {self.ema_decay}")


@dataclass(kw_only=True)
class ToyConfig(PretrainConfig):
    toy: ToySection = field(default_factory=ToySection)


class ToyModel(nn.Module):
    """Per-frame regression on raw audio, and an EMA teacher of its head (a buffer, so that the
    checkpoint holds it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, kernel_size=400, stride=320)
        self.head = nn.Linear(4, 1)
        self.register_buffer("teacher", torch.zeros(5))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        # (B, 1, S) -> (B, C, T) -> (B, T, C) -> (B, T)
        x = torch.tanh(self.conv(wav[:, None])).transpose(1, 2)
        return self.head(x).squeeze(-1)

    def student(self) -> torch.Tensor:
        return torch.cat([self.head.weight.flatten(), self.head.bias]).detach()


def toy_objective(cfg: ToyConfig) -> Objective:
    def step(model, batch, step: int, generator: torch.Generator) -> StepOutput:
        prediction = model(batch.wav)  # (B, T)
        # A random half of the frames, from the loop's generator: a resume must replay it.
        keep = torch.rand(prediction.shape, generator=generator) < 0.5
        loss = ((prediction - cfg.toy.target).pow(2) * keep).sum()
        return StepOutput(loss=loss, sample_size=keep.sum(), sums={"kept": keep.sum()})

    def summarize(sums: dict[str, float]) -> dict[str, float]:
        return {"loss": sums["loss"] / max(sums["sample_size"], 1.0), "kept": sums["kept"]}

    def after_update(model: nn.Module, step: int) -> None:
        decay = cfg.toy.ema_decay
        model.teacher.mul_(decay).add_(model.student(), alpha=1 - decay)

    return Objective(step=step, summarize=summarize, after_update=after_update)


class ToyMonitor(Monitor):
    """The shared signatures plus one of the toy's own: too few frames kept for the loss."""

    ADVICE = Monitor.ADVICE | {"few_kept": ("the toy keeps half the frames", "nothing")}

    def __init__(self, least: float) -> None:
        super().__init__()
        self.least = least

    def conditions(self, record: dict, step: int) -> dict[str, str | None]:
        kept = record.get("kept", self.least)
        few = f"{kept:.0f} frames kept" if kept < self.least else None
        return {"few_kept": few} | super().conditions(record, step)


TOY = PretrainObjective(
    name="toy",
    config=ToyConfig,
    new_model=lambda cfg: ToyModel(),
    objective=toy_objective,
    columns=(Column("loss", "toy-loss", ".4f"), Column("kept", "kept", ".0f"), *LOOP_COLUMNS),
    next_command=lambda cfg, model, out_dir: f"toy-next {model}",
    find_unused_parameters=lambda cfg: False,
    health=lambda config: ToyMonitor(least=1e9),  # every record: a finding at the first
)


@pytest.fixture
def toy(monkeypatch):
    """The toy objective registered for one test (the registry is restored after it)."""
    monkeypatch.setattr(registry, "OBJECTIVES", dict(registry.OBJECTIVES))
    registry.register(TOY)


def _pretrain(manifest_dir: Path, out_dir: Path, *extra: str) -> int:
    return cli.main(
        [
            "pretrain", "objective=toy", f"data.manifest_dir={manifest_dir}",
            f"train.out_dir={out_dir}", "data.min_samples=4000", "data.max_samples=8000",
            "data.max_batch_samples=32000", "data.num_workers=0", "train.precision=fp32",
            "train.device=cpu", "train.log_interval=2", "train.save_interval_steps=4",
            "optim.warmup_steps=2", "optim.total_steps=8", "optim.lr=0.01", *extra,
        ]
    )  # fmt: skip


def test_a_registered_objective_trains_checkpoints_and_resumes_exactly(
    toy, manifest_dir, tmp_path, capsys
):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _pretrain(manifest_dir, straight, "train.max_steps=8") == 0
    assert "next: toy-next " + str(straight / checkpoint.BEST) in capsys.readouterr().out
    assert _pretrain(manifest_dir, split, "train.max_steps=4") == 0
    assert _pretrain(manifest_dir, split, "train.max_steps=8") == 0
    assert "resumed from" in capsys.readouterr().out
    a = checkpoint.load(straight / checkpoint.LAST)
    b = checkpoint.load(split / checkpoint.LAST)
    assert a["progress"]["step"] == b["progress"]["step"] == 8
    assert a["model"].keys() == b["model"].keys() == ToyModel().state_dict().keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # The hook ran after every update: the teacher is the EMA of the student's head, not zero.
    teacher, head = a["model"]["teacher"], a["model"]["head.weight"]
    assert teacher.abs().sum() > 0 and not torch.equal(teacher[:4], head.flatten())
    # The run's config is the objective's: its own section, no wav2vec 2.0 `loss`.
    saved = yaml.safe_load((straight / "config.yaml").read_text())
    assert saved["objective"] == "toy" and saved["toy"] == {"target": 0.3, "ema_decay": 0.5}
    assert "loss" not in saved
    records = [json.loads(line) for line in (split / "train_log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["num_updates"] for r in train] == [2, 4, 6, 8]
    assert all(0 < r["kept"] and 0 < r["loss"] for r in train)


def test_its_health_signatures_watch_the_run_and_the_report(toy, manifest_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _pretrain(manifest_dir, out, "train.max_steps=4") == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if "health [" in line]
    assert len(printed) == 1 and printed[0].startswith("health [few_kept] at update 2: ")
    config = yaml.safe_load((out / "config.yaml").read_text())
    found = registry.findings(read_log(out / "train_log.jsonl"), config)
    assert [(f.code, f.step) for f in found] == [("few_kept", 2)]


def test_the_teacher_follows_the_student_by_the_configured_decay(toy, manifest_dir, tmp_path):
    # One update with decay 0.25: teacher = 0.25 * 0 + 0.75 * student after the update.
    out = tmp_path / "one"
    assert _pretrain(manifest_dir, out, "train.max_steps=1", "toy.ema_decay=0.25") == 0
    state = checkpoint.load(out / checkpoint.LAST)["model"]
    student = torch.cat([state["head.weight"].flatten(), state["head.bias"]])
    assert torch.allclose(state["teacher"], 0.75 * student, rtol=0, atol=1e-7)


def test_its_columns_are_the_console_table(toy, manifest_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # the terminal's table, not JSON lines
    assert _pretrain(manifest_dir, tmp_path / "run", "train.max_steps=2") == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if "toy-loss" in line).split()
    assert header[:4] == ["update", "epoch", "toy-loss", "kept"]
    record = json.loads((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()[0])
    row = next(line for line in lines if line.split()[:1] == ["2"]).split()
    assert row[2:4] == [f"{record['loss']:.4f}", f"{record['kept']:.0f}"]


def test_an_unknown_objective_or_another_objectives_section_is_one_line(
    toy, manifest_dir, tmp_path, capsys
):
    assert _pretrain(manifest_dir, tmp_path / "a", "objective=nope") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("objective: 'nope' is not one of 'wav2vec2', 'hubert', 'toy'")
    assert len(err.splitlines()) == 1
    assert _pretrain(manifest_dir, tmp_path / "b", "loss.diversity_weight=0.2") == 2
    assert "unknown config key 'loss'" in capsys.readouterr().err


def test_a_run_directory_of_another_objective_is_refused(toy, manifest_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _pretrain(manifest_dir, out, "train.max_steps=1") == 0
    capsys.readouterr()
    assert _pretrain(manifest_dir, out, "objective=wav2vec2", "train.max_steps=2") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        f"objective: {out / checkpoint.LAST} was trained with objective 'toy', not 'wav2vec2'; "
        "to start from its weights, pass it as --init-from with another train.out_dir"
    )
