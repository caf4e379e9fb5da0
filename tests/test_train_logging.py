"""What the loop logs and when it validates and saves: `MetricsWindow` and `summarize` against hand
sums, the logged lr / gnorm / sample size, the best checkpoint, the validation cadence, `evaluate`,
and a run without a usable valid split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import (
    TINY_YAML,
    TOY,
    ToyModel,
    make_manifest,
    mean_loss,
    random_rows,
    toy_config,
    toy_state,
    toy_train,
    update,
)

from w2vkit import cli
from w2vkit.config import ConfigError
from w2vkit.data.config import DataConfig
from w2vkit.data.loader import build_loaders
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.pretrain.wav2vec2 import pretraining_objective, summarize
from w2vkit.train import checkpoint
from w2vkit.train.loop import evaluate, micro_batch_groups
from w2vkit.train.metrics import LOOP_COLUMNS, Column, ConsoleTable, MetricsWindow, RunLogger
from w2vkit.train.state import Objective

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("tones"))


def _records(out_dir: Path, split: str) -> list[dict]:
    lines = (out_dir / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_metrics_window_sums_and_averages_like_hand_arithmetic():
    window = MetricsWindow()
    window.add({"loss": torch.tensor(3.0), "count": 4}, {"temp": torch.tensor(2.0)})
    window.add({"loss": torch.tensor(1.5), "count": 6}, {"temp": 1.0})
    window.add({"loss": 0.5, "correct": torch.tensor(5)}, {"temp": torch.tensor(0.0)})
    window.num_updates = 2
    sums, means, extra = window.reduce(CPU, {"audio": 16000.0})
    assert sums == {"loss": 5.0, "count": 10.0, "correct": 5.0}
    assert means == {"temp": 1.0}  # over micro-batches: (2 + 1 + 0) / 3
    assert extra == {"audio": 16000.0, "audio_samples": 0.0}
    restored = MetricsWindow()
    restored.load_state_dict(window.all_reduced(CPU).state_dict())
    assert restored.reduce(CPU)[:2] == (sums, means) and restored.num_updates == 2
    assert MetricsWindow().reduce(CPU) == ({}, {}, {"audio_samples": 0.0})


def test_summarize_gives_bits_per_masked_frame_and_fairseq_accuracy():
    ln2 = math.log(2)
    sums = {"loss": 20.0, "loss_0": 16.0, "loss_1": 3.0, "loss_2": 1.0, "sample_size": 8.0}
    record = summarize(sums | {"correct": 3.0, "count": 6.0, "negatives_equal": 2, "negatives": 80})
    assert record == pytest.approx(
        {
            "loss": 20 / 8 / ln2,
            "loss_0": 16 / 8 / ln2,
            "loss_1": 3 / 8 / ln2,
            "loss_2": 1 / 8 / ln2,
            "accuracy": 0.5,
            "negatives_equal_positive": 2 / 80,
            "sample_size": 8.0,
        }
    )
    assert "accuracy" not in summarize(sums | {"correct": 0.0, "count": 0.0})


def _replay(manifest_dir: Path, out_dir: Path, *overrides: str, updates: int):
    """Train, then replay the run's batches update by update: (log records, update results,
    audio seconds per update)."""
    toy_train(manifest_dir, out_dir, *overrides)
    cfg = toy_config(
        f"data.manifest_dir={manifest_dir}",
        "data.min_samples=4000",
        "data.max_samples=16000",
        "data.max_batch_samples=48000",
        *overrides,
    )
    loader = build_loaders(cfg.data, cfg.train.seed, 0, 1)["train"]
    state = toy_state(cfg, loader.sampler)
    groups = micro_batch_groups(loader, loader.sampler, cfg.train.update_freq, 0)
    audio_sec, results = [], []
    for _ in range(updates):
        group = next(groups)
        audio_sec.append(sum(b.num_audio_samples for b in group) / 16000)
        results.append(update(state, group, TOY, cfg))
    return _records(out_dir, "train"), results, audio_sec


def test_logged_lr_gnorm_sample_size_and_loss_are_those_of_the_updates(manifest_dir, tmp_path):
    overrides = ("train.max_steps=4", "train.log_interval=2", "train.update_freq=2")
    logged, results, audio_sec = _replay(
        manifest_dir, tmp_path / "run", *overrides, "optim.clip_norm=0.001", updates=4
    )
    assert [r["num_updates"] for r in logged] == [2, 4]
    for record, (a, b) in zip(logged, [results[0:2], results[2:4]], strict=True):
        step = record["num_updates"]
        assert record["lr"] == pytest.approx(0.01 * (1 - step / 4))  # no warmup, linear to 0 at 4
        assert record["gnorm"] == pytest.approx(b.gnorm, rel=1e-5) and b.gnorm > 0.01  # pre-clip
        assert record["sample_size"] == pytest.approx((a.sample_size + b.sample_size) / 2)
        first = 2 * (step // 2 - 1)
        assert record["batch_audio_sec"] == pytest.approx(sum(audio_sec[first : first + 2]) / 2)
        assert record["loss"] == pytest.approx(
            (a.loss + b.loss) / (a.sample_size + b.sample_size), rel=1e-5
        )


def test_a_line_per_update_logs_that_update_and_the_nonfinite_count(manifest_dir, tmp_path):
    overrides = ("train.max_steps=2", "train.log_interval=1")
    logged, results, _ = _replay(manifest_dir, tmp_path / "run", *overrides, updates=2)
    assert [r["num_updates"] for r in logged] == [1, 2]
    for record, result in zip(logged, results, strict=True):
        assert record["sample_size"] == pytest.approx(result.sample_size)
        assert record["loss"] == pytest.approx(result.loss / result.sample_size, rel=1e-5)
        assert record["num_nonfinite"] == 0


def _scripted_validation(values: list[float], seen: list[int]) -> Objective:
    """The toy objective whose validation returns `values` in turn and records its steps."""

    def validate(model, loader, step):
        assert not model.training
        seen.append(step)
        return {"loss": values[len(seen) - 1]}

    return Objective(TOY.step, mean_loss, validate=validate)


def test_the_best_checkpoint_is_the_lowest_validation_and_a_tie_goes_to_the_later(
    manifest_dir, tmp_path
):
    seen: list[int] = []
    state, _ = toy_train(
        manifest_dir,
        tmp_path,
        "train.max_steps=4",
        "train.validate_interval_steps=1",
        "train.save_interval_steps=0",
        objective=_scripted_validation([3.0, 2.0, 2.0, 2.5], seen),
        validate=True,
    )
    assert seen == [1, 2, 3, 4] and (state.best_metric, state.best_step) == (2.0, 3)
    best = checkpoint.load(tmp_path / checkpoint.BEST)
    assert best["progress"]["step"] == 3  # not 2 (a tie goes to the later model), not 4 (higher)
    assert best["progress"]["best_metric"] == 2.0 and best["metrics"]["valid"] == {"loss": 2.0}
    assert best["progress"]["best_step"] == 3
    valid = _records(tmp_path, "valid")
    assert [r["best_loss"] for r in valid] == [3.0, 2.0, 2.0, 2.0]
    assert [(r["num_updates"], r["epoch"]) for r in valid] == [(1, 1), (2, 1), (3, 1), (4, 1)]
    assert checkpoint.load(tmp_path / checkpoint.LAST)["progress"]["step"] == 4


def test_a_validation_without_the_best_metric_names_what_it_has(manifest_dir, tmp_path):
    def validate(model, loader, step):
        return {"wer": 1.0, "cer": 0.5}

    objective = Objective(TOY.step, mean_loss, validate=validate)
    with pytest.raises(KeyError) as err:
        toy_train(manifest_dir, tmp_path, "train.max_steps=1", objective=objective, validate=True)
    assert err.value.args[0] == (
        "the validation record has no 'loss' (Objective.best_metric); it has cer, wer"
    )


def test_validation_runs_every_interval_at_each_save_and_at_the_end(manifest_dir, tmp_path):
    seen: list[int] = []
    toy_train(
        manifest_dir,
        tmp_path,
        "train.max_steps=7",
        "train.validate_interval_steps=2",
        "train.save_interval_steps=3",
        "train.keep_interval_checkpoints=0",
        objective=_scripted_validation([5.0, 4.0, 6.0, 7.0, 8.0], seen),
        validate=True,
    )
    assert seen == [2, 3, 4, 6, 7]
    steps = sorted(int(p.stem.split("_")[2]) for p in tmp_path.glob("checkpoint_*_*.pt"))
    assert steps == [3, 6]
    assert checkpoint.load(tmp_path / checkpoint.BEST)["progress"]["step"] == 3


def test_evaluate_uses_fixed_masks_and_restores_the_mode():
    cfg = toy_config()
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg.model)
    objective = pretraining_objective(cfg.loss, cfg.model.quantizer)
    modes = []
    step = objective.step
    objective.step = lambda m, b, s, g: modes.append(m.training) or step(m, b, s, g)
    batches = [random_rows(2, 8000, 1), random_rows(3, 8000, 2)]

    def run(model, train_cfg, step):
        return evaluate(model, batches, objective, cfg=train_cfg, device=CPU, step=step)

    first = run(model.train(), cfg.train, 3)
    torch.rand(100)  # global RNG use in between changes nothing
    again = run(model, cfg.train, 3)
    later = run(model, cfg.train, 5)  # the temperature moves on; argmax codes ignore it
    assert model.training and modes == [False] * 6
    assert first == again and "sample_size" not in first
    assert later["loss"] == first["loss"] and later["temp"] < first["temp"]
    assert set(first) >= {"loss", "loss_0", "accuracy", "prob_perplexity", "temp"}
    other_seed = run(model.eval(), toy_config("train.seed=2").train, 3)
    assert not model.training  # eval mode stays eval mode
    assert other_seed["loss"] != first["loss"]  # the masks and negatives come from train.seed


def test_evaluate_sums_over_the_whole_split_before_dividing():
    cfg = toy_config()
    torch.manual_seed(0)
    model = ToyModel()
    batches = [random_rows(1, 3200, 1), random_rows(3, 6400, 2)]
    with torch.no_grad():
        parts = [TOY.step(model, b, 0, None) for b in batches]
    expected = sum(p.loss for p in parts) / sum(p.sample_size for p in parts)
    record = evaluate(model, batches, TOY, cfg=cfg.train, device=CPU, step=0)
    assert record["loss"] == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("valid", ["only-root-line", "zero-bytes", "too-short"])
def test_a_valid_split_without_usable_items_runs_without_validation(tmp_path, capsys, valid):
    dest = make_manifest(tmp_path, num_files=6, valid_percent=0.0)
    root, *rows = (dest / "train.tsv").read_text().splitlines()
    text = {"only-root-line": root + "\n", "zero-bytes": "", "too-short": f"{root}\nx.wav\t100\n"}
    (dest / "valid.tsv").write_text(text[valid])
    out_dir = tmp_path / "run"
    code = cli.main(
        [
            "pretrain",
            TINY_YAML,
            f"data.manifest_dir={dest}",
            f"train.out_dir={out_dir}",
            "train.max_steps=2",
            "train.log_interval=1",
            "train.validate_interval_steps=1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    # Said once, naming the file (whatever part of the recipe notices it).
    said = [line for line in out.splitlines() if f"{dest / 'valid.tsv'}" in line]
    assert len(said) == 1 and "validation" in said[0]
    assert _records(out_dir, "valid") == [] and len(_records(out_dir, "train")) == 2
    assert checkpoint.load(out_dir / checkpoint.LAST)["progress"]["step"] == 2
    last = out_dir / checkpoint.LAST
    assert f"next: w2vkit extract {last} {dest / 'train.tsv'} --out {out_dir / 'features'}" in out


def test_the_console_table_aligns_a_header_and_a_row_per_train_record():
    table = ConsoleTable([Column("loss", "loss", ".3f"), Column("accuracy", "acc", ".2f")])
    train = {"split": "train", "epoch": 2, "num_updates": 40, "loss": 3.14159}
    header, row = table.lines(train, "0:01:05")
    assert header.split() == ["update", "epoch", "loss", "acc", "ETA"]
    assert row.split() == ["40", "2", "3.142", "-", "0:01:05"]
    assert len(header) == len(row)  # right-aligned under their headers
    assert [len(line) for line in table.lines(train | {"accuracy": 0.5}, "-")] == [len(row)]
    valid = {"split": "valid", "epoch": 2, "num_updates": 40, "loss": 2.5, "best_loss": 2.5}
    assert table.lines(valid, "-") == ["valid @ 40: loss 2.500  best_loss 2.5"]
    table.num_rows = ConsoleTable.HEADER_EVERY
    assert len(table.lines(train, "-")) == 2  # the header again


def test_on_a_terminal_the_console_shows_the_table_and_the_file_keeps_json(tmp_path, capsys):
    columns = (Column("loss", "loss", ".3f"), *LOOP_COLUMNS)
    logger = RunLogger(
        tmp_path,
        total_steps=10,
        start_step=0,
        tensorboard=False,
        progress_bar=True,
        columns=columns,
    )
    for step in range(1, 5):
        logger.progress(step)
    assert logger.bar.n == 4  # the bar moves every update, not every log line
    record = {"split": "train", "epoch": 1, "num_updates": 4, "loss": 1.5, "lr": 0.001}
    logger.log(record)
    logger.close()
    out = capsys.readouterr().out
    assert "1.500" in out and "1.00e-03" in out and "{" not in out
    assert [
        json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()
    ] == [record]
    assert {c.key for c in LOOP_COLUMNS} >= {"lr", "gnorm", "batch_audio_sec", "audio_sec_per_sec"}


def test_off_a_terminal_the_console_gets_the_json_lines(tmp_path, capsys):
    logger = RunLogger(
        tmp_path, total_steps=10, start_step=0, tensorboard=False, progress_bar=False
    )
    logger.log({"split": "train", "epoch": 1, "num_updates": 1, "loss": 1.5})
    assert json.loads(capsys.readouterr().out) == {
        "split": "train",
        "epoch": 1,
        "num_updates": 1,
        "loss": 1.5,
    }


def test_a_train_split_without_usable_items_is_a_config_error(tmp_path):
    data = DataConfig(manifest_dir=str(tmp_path), min_samples=8000, max_samples=16000)
    with pytest.raises(ConfigError, match=r"train.tsv is missing or empty; write it with"):
        build_loaders(data, 1, 0, 1)
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\nshort.wav\t100\n")
    with pytest.raises(ConfigError, match=r"no utterance of at least data.min_samples=8000"):
        build_loaders(data, 1, 0, 1)
