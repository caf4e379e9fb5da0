"""`w2vkit demo`: end to end through the real entry point, plus its safety and log-following parts."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import w2vkit
from w2vkit.cli import main
from w2vkit.data import espeak
from w2vkit.recipes.demo import MARKER
from w2vkit.recipes.demo_console import CurvePrinter

pytest.importorskip("espeakng_loader")


def test_demo_runs_end_to_end(tmp_path):
    out_dir = tmp_path / "demo"
    env = dict(os.environ, PYTHONPATH=str(Path(w2vkit.__file__).parents[1]))
    done = subprocess.run(
        [sys.executable, "-m", "w2vkit", "demo", "--out-dir", str(out_dir), "--minutes", "0.25",
         "--steps", "4", "--seed", "1"],
        check=False, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
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
