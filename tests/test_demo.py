"""`w2vkit demo`: end to end through the real entry point, plus its safety and log-following parts."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import w2vkit
from w2vkit.cli import main
from w2vkit.data import espeak
from w2vkit.recipes import demo_asr
from w2vkit.recipes.demo import MARKER
from w2vkit.recipes.demo_console import CurvePrinter

pytest.importorskip("espeakng_loader")


def test_demo_runs_end_to_end(tmp_path):
    out_dir = tmp_path / "demo"
    env = dict(os.environ, PYTHONPATH=str(Path(w2vkit.__file__).parents[1]))
    done = subprocess.run(
        [sys.executable, "-m", "w2vkit", "demo", "--out-dir", str(out_dir), "--minutes", "0.25",
         "--steps", "4", "--finetune-steps", "2", "--seed", "1"],
        check=False, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # The closing table: every row, phones for all four, CER/WER for the three recognisers.
    table = demo_table(done.stdout)
    assert list(table) == ["pretrained", "random", "logmel", "logmel ±4", "chance"]
    for source in ("pretrained", "random", "logmel"):
        assert len(table[source]) == 2 + 4 and all(v >= 0 for v in table[source][2:]), source
        assert (out_dir / "asr" / source / "checkpoint_last.pt").is_file()
    assert table["logmel ±4"][2:] == [] and 0 < table["logmel ±4"][0] <= 1
    run_dir = out_dir / "pretrain"
    records = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["num_updates"] for r in train] == [1, 2, 3, 4]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["loss"] > 0 for r in train)
    assert (run_dir / "checkpoint_last.pt").is_file()
    assert sorted((out_dir / "corpus").rglob("*.flac"))
    assert (out_dir / "manifest" / "train.tsv").is_file()
    # The printed curve and summary come from the same log.
    assert f"{train[0]['loss']:.3f}" in done.stdout
    assert "contrastive part" in done.stdout and str(run_dir / "checkpoint_last.pt") in done.stdout
    # Then features of every file, seen and unseen voices, the labels table and the report.
    index = (out_dir / "features" / "index.tsv").read_text().splitlines()[1:]
    assert {row.split("/")[0] for row in index} == {"seen", "unseen"}
    table = (out_dir / "labels" / "utterances.tsv").read_text().splitlines()
    assert table[0] == "path\tvoice\tsentence\tpretraining" and len(table) == len(index) + 1
    assert (run_dir / "report.html").is_file() and (run_dir / "plots" / "loss_parts.png").is_file()
    assert (
        f"report: {run_dir / 'report.html'}" in done.stdout and "w2vkit probe feats/" in done.stdout
    )


def demo_table(stdout: str) -> dict[str, list[float]]:
    """The closing table's rows: {source: [phone accuracy, voice accuracy, CER, WER, +LM...]}."""
    rows = stdout[stdout.index("probe test accuracy, best layer") :].splitlines()[2:7]
    table = {}
    for row in rows:
        name, _, cells = row.strip().partition("  ")
        cells = re.sub(r"\(layer +[-\d]+\)", "", cells)
        table[name.strip()] = [float(c) for c in cells.split() if c != "-"]
    return table


@pytest.mark.long
@pytest.mark.xfail(
    strict=False,
    reason="the demo's pretraining recipe (tiny.yaml) does not win yet; enable when the lead "
    "switches demo.PRETRAIN_CONFIG to the winning recipe of issues 27 and 29",
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_demo_pretrained_wins_every_row(tmp_path, seed):
    # Issue 32's claim at a reduced size: pretrained phones beat log-mel ±4, and the pretrained
    # recogniser's CER beats both the random-init twin's and the supervised log-mel baseline's.
    env = dict(os.environ, PYTHONPATH=str(Path(w2vkit.__file__).parents[1]))
    done = subprocess.run(
        [sys.executable, "-m", "w2vkit", "demo", "--out-dir", str(tmp_path), "--minutes", "1.5",
         "--steps", "150", "--finetune-steps", "100", "--seed", str(seed)],
        check=False, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    table = demo_table(done.stdout)
    assert table["pretrained"][0] > table["logmel ±4"][0]
    assert table["pretrained"][2] < min(table["random"][2], table["logmel"][2])


def test_demo_refuses_folders_it_did_not_make(tmp_path, capsys):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "precious.flac").write_bytes(b"x")
    assert main(["demo", "--out-dir", str(tmp_path), "--minutes", "0.1", "--steps", "1"]) == 2
    assert "not made by `w2vkit demo`" in capsys.readouterr().err
    assert (tmp_path / "corpus" / "precious.flac").is_file()
    assert not (tmp_path / MARKER).exists()


def test_demo_without_espeak_says_what_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(espeak, "_ENGINE", None)
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # makes the import fail
    assert main(["demo", "--out-dir", str(tmp_path), "--minutes", "0.1", "--steps", "1"]) == 1
    assert "pip install espeakng-loader" in capsys.readouterr().err


def test_demo_rejects_bad_sizes(tmp_path, capsys):
    assert main(["demo", "--out-dir", str(tmp_path), "--minutes", "0", "--steps", "5"]) == 2
    assert "--minutes must be > 0" in capsys.readouterr().err


def test_curve_printer_reads_only_complete_lines(tmp_path):
    log = tmp_path / "train_log.jsonl"
    out = io.StringIO()
    first = {"split": "train", "num_updates": 10, "loss": 8.0, "loss_0": 3.4, "accuracy": 0.1,
             "prob_perplexity": 20.0, "temp": 2.0}  # fmt: skip
    second = dict(first, num_updates=20, loss=4.0, loss_0=2.5, accuracy=0.3)
    printer = CurvePrinter(log, out, poll_seconds=60.0)  # no polling: reads when told and on exit
    with printer:
        log.write_text(json.dumps(first) + "\n" + json.dumps(second)[:15])  # second half-written
        printer._read_new()
        assert [r["num_updates"] for r in printer.records] == [10]
        with open(log, "a") as f:
            f.write(json.dumps(second)[15:] + "\n")
    assert [r["loss"] for r in printer.records] == [8.0, 4.0]
    rows = out.getvalue().splitlines()[1:]
    assert rows[1].split()[:4] == ["20", "4.000", "2.500", "0.300"]
    # The bar is the accuracy, 40 characters for 1.0.
    assert rows[0].count("#") == 4 and rows[1].count("#") == 12


@pytest.mark.parametrize(("code", "raised"), [(2, demo_asr.StepFailed), (130, KeyboardInterrupt)])
def test_a_failed_recogniser_step_stops_the_demo_cleanly(tmp_path, code, raised):
    # A failing command is one line and its exit code; Ctrl-C in a command stops the whole demo.
    calls = []

    def run(name: str, argv: list[str]) -> int:
        calls.append(name)
        return code

    with pytest.raises(raised) as caught:
        demo_asr.label_splits(tmp_path / "corpus", tmp_path / "manifest", 0, run)
    assert calls == ["labels"]  # nothing runs after the failed command
    if raised is demo_asr.StepFailed:
        assert str(caught.value) == "writing the labels or the LM failed (exit code 2)"
        assert caught.value.code == 2
