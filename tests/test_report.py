"""`w2vkit report` / `w2vkit plot`: files with every plot, findings first, codebook usage, browser check."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import audiogen
import numpy as np
import pytest
import torch
import yaml

from w2vkit import cli
from w2vkit.config import to_dict
from w2vkit.data.dataset import AudioDataset
from w2vkit.data.manifest import read_manifest
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.report import browser
from w2vkit.report.codebook import codebook_usage, usage_perplexity

CURVES = ["loss_parts", "accuracy", "perplexity", "temperature", "learning_rate", "gradient_norm"]


def _records(stuck: bool) -> list[dict]:
    chance = math.log2(11)
    records = []
    for step in range(10, 610, 10):
        contrastive = chance if stuck else chance - 0.01 * step
        records.append(
            {
                "split": "train",
                "num_updates": step,
                "loss": contrastive + 0.1,
                "loss_0": contrastive,
                "loss_1": 0.1,
                "accuracy": 0.1 + 0.001 * step,
                "prob_perplexity": 25.0,
                "code_perplexity": 22.0,
                "temp": 2.0 * 0.9995**step,
                "lr": 1e-3,
                "gnorm": 0.5,
                "num_nonfinite": 0,
            }
        )
        if step % 50 == 0:
            records.append(
                {
                    "split": "valid",
                    "num_updates": step,
                    "loss": contrastive,
                    "loss_0": contrastive,
                    "accuracy": 0.2,
                }
            )
    return records


def _run_dir(tmp_path: Path) -> Path:
    """A pretraining run directory by hand: log, config, a tiny checkpoint, a valid manifest."""
    audio = tmp_path / "audio"
    audiogen.make_corpus(audio, 4, (0.5, 1.0), 16_000, seed=0)
    assert (
        cli.main(
            [
                "manifest",
                str(audio),
                "--dest",
                str(tmp_path / "m"),
                "--valid-percent",
                "0.5",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    model = Wav2Vec2Model.from_preset("tiny")
    config = {
        "model": to_dict(model.cfg),
        "data": {"manifest_dir": str(tmp_path / "m"), "valid_split": "valid"},
    }
    torch.save({"model": model.state_dict(), "config": config}, run / "checkpoint_last.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(False)))
    return run


def _probe_json(tmp_path: Path) -> Path:
    """A voice probe through the CLI on hand-written features, with an utterance table."""
    from helpers import VOICES, write_features

    rng = np.random.default_rng(0)
    items, table = {}, ["path\tvoice\tsentence"]
    for v, voice in enumerate(VOICES[:4]):
        for s in range(6):
            items[f"{voice}/{s}.flac"] = np.stack(
                [rng.normal(size=8), v + 0.3 * rng.normal(size=8)]
            )
            table.append(f"{voice}/{s}.flac\t{voice}\ts{s}")
    write_features(tmp_path / "feats", items)
    (tmp_path / "utt.tsv").write_text("\n".join(table) + "\n")
    argv = [
        "probe",
        str(tmp_path / "feats"),
        "--labels",
        str(tmp_path / "utt.tsv"),
        "--target",
        "voice",
    ]
    assert cli.main([*argv, "--split-by", "sentence", "--out", str(tmp_path / "probe")]) == 0
    return tmp_path / "probe" / "probe.json"


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> Path:
    """One run directory with its report (curves, codebook, a voice probe, PCA), shared."""
    tmp_path = tmp_path_factory.mktemp("report")
    run = _run_dir(tmp_path)
    assert cli.main(["report", str(run), "--probe", str(_probe_json(tmp_path))]) == 0
    return run


def test_report_files_exist_and_show_every_plot(reported):
    run = reported
    page = (run / "report.html").read_text()
    markdown = (run / "report.md").read_text()
    expected = [
        *CURVES,
        "valid_loss",
        "valid_accuracy",
        "codebook",
        "probe_0_bars",
        "probe_0_layers",
        "pca",
    ]
    for name in expected:
        png = run / "plots" / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG", name
        assert f"src='plots/{name}.png'" in page and f"(plots/{name}.png)" in markdown
    assert re.findall(r"src='([^']+)'", page) == [f"plots/{n}.png" for n in expected]
    assert "No health findings" in page
    # The probe table: the best layer per source and chance.
    assert "| pretrained | 4 |" in markdown and "| chance |" in markdown
    assert "held-out sentence" in markdown


def test_health_findings_come_first(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump({"model": to_dict(Wav2Vec2Model.from_preset("tiny").cfg)})
    )
    (run / "train_log.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in _records(stuck=True))
    )
    assert cli.main(["plot", str(run)]) == 0
    assert "health [loss_at_chance]" in capsys.readouterr().err
    assert cli.main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert page.index("loss_at_chance") < page.index("Training curves")
    assert "likely cause: nothing is being learned" in page
    assert "loss_at_chance (update" in (run / "report.md").read_text()
    assert "Codebook usage" in page and "not drawn: needs a checkpoint" in page
    # An encoder-only checkpoint (no quantizer weights) is not drawn from random weights.
    model = Wav2Vec2Model.from_preset("tiny")
    encoder = {
        k: v
        for k, v in model.state_dict().items()
        if not k.startswith(("quantizer.", "target_proj.", "context_proj."))
    }
    torch.save(
        {"model": encoder, "config": {"model": to_dict(model.cfg)}}, run / "checkpoint_last.pt"
    )
    (run / "valid.tsv").write_text(f"{tmp_path}\na.wav\t16000\n")
    assert cli.main(["report", str(run), "--valid-manifest", str(run / "valid.tsv")]) == 0
    assert "has no quantizer weights" in (run / "report.md").read_text()


def test_codebook_usage_is_the_argmax_of_the_quantizer_logits(tmp_path):
    run = _run_dir(tmp_path)
    dataset = AudioDataset(read_manifest(tmp_path / "m" / "valid.tsv"))
    model = Wav2Vec2Model.from_preset("tiny")
    model.load_state_dict(torch.load(run / "checkpoint_last.pt", weights_only=True)["model"])
    counts = codebook_usage(model, dataset)
    expected = np.zeros((2, 16), dtype=np.int64)
    with torch.no_grad():
        for i in range(len(dataset)):
            conv = model.feature_extractor(dataset.load(i)[None]).transpose(1, 2)  # (1, T, C)
            logits = model.quantizer.weight_proj(model.feature_norm(conv))[0].view(-1, 2, 16)
            for g in range(2):
                np.add.at(expected[g], logits[:, g].argmax(-1).numpy(), 1)
    np.testing.assert_array_equal(counts, expected)
    assert 2 < usage_perplexity(counts) <= 32
    # A collapsed codebook: zero projection, every frame on entry 0 of each group, perplexity G.
    with torch.no_grad():
        model.quantizer.weight_proj.weight.zero_()
    collapsed = codebook_usage(model, dataset)
    assert collapsed[:, 0].tolist() == expected.sum(1).tolist() and collapsed[:, 1:].sum() == 0
    assert usage_perplexity(collapsed) == pytest.approx(2.0)


def test_plot_draws_the_curves_alone(reported, tmp_path, capsys):
    assert cli.main(["plot", str(reported), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [
        str(tmp_path / "plots" / f"{n}.png") for n in [*CURVES, "valid_loss", "valid_accuracy"]
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots"]  # no report.html, no codebook
    assert cli.main(["plot", str(tmp_path)]) == 2
    assert "train_log.jsonl not found" in capsys.readouterr().err


@pytest.mark.skipif(browser.find_browser() is None, reason="no Chromium (apt-get install chromium)")
def test_the_report_renders_in_headless_chromium(reported, tmp_path):
    shot = browser.screenshot(reported / "report.html", tmp_path / "shot.png")
    assert browser.ink_fraction(shot) > 0.03  # text and plots; a blank or broken page is ~0
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body></body></html>")
    assert browser.ink_fraction(browser.screenshot(blank, tmp_path / "blank.png")) < 0.001
