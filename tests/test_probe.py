"""`w2vkit probe`: linear probes find a linearly coded label, not noise; splits, labels, reports."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from w2vkit import cli
from w2vkit.config import to_dict
from w2vkit.data.manifest import Manifest, write_manifest
from w2vkit.embed.extract import INDEX_HEADER
from w2vkit.embed.probe import fit_logistic, probe_layers, stratified_split
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.recipes import probe as recipe


def _synthetic(num_items: int = 150, dim: int = 24, seed: int = 0):
    """Layer 0: pure noise; layer 1: noise plus a class-dependent mean. 3 classes."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(num_items) % 3  # (N,)
    noise = torch.randn(num_items, dim, generator=g)
    class_means = 1.5 * torch.randn(3, dim, generator=g)
    coded = class_means[targets] + torch.randn(num_items, dim, generator=g)
    labels = [["low", "mid", "high"][int(t)] for t in targets]
    return torch.stack([noise, coded]), labels  # (2, N, D)


def test_probe_finds_the_coded_layer_and_not_the_noise():
    vectors, labels = _synthetic()
    result = probe_layers(vectors, [0, 7], labels, seed=0)
    noise, coded = result.scores
    assert (noise.layer, coded.layer) == (0, 7) and result.best.layer == 7
    assert coded.accuracy >= 0.95
    assert result.num_test == 39 and result.chance_accuracy == pytest.approx(13 / 39)
    assert noise.accuracy < 0.6  # chance is 1/3; 39 test items: 0.6 is > 3.5 standard deviations
    assert result.classes == ["high", "low", "mid"]


def test_probe_is_deterministic_for_a_seed():
    vectors, labels = _synthetic(90)
    first = probe_layers(vectors, [0, 1], labels, seed=3)
    assert probe_layers(vectors, [0, 1], labels, seed=3) == first
    targets = torch.tensor([["low", "mid", "high"].index(x) for x in labels])
    split = [stratified_split(targets, 0.25, torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert torch.equal(split[0][1], split[1][1]) and not torch.equal(split[0][1], split[2][1])


def test_stratified_split_per_class_counts():
    targets = torch.tensor([0] * 8 + [1] * 4 + [2])  # class 2 has one item: train only
    train, test = stratified_split(targets, 0.25, torch.Generator().manual_seed(0))
    assert sorted(torch.cat([train, test]).tolist()) == list(range(13))
    assert torch.bincount(targets[test], minlength=3).tolist() == [2, 1, 0]
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(targets, 1.0, torch.Generator())
    # Chance = majority training class scored on the test set: 3 of 4 here (7 of 10 in train).
    vectors = torch.randn(1, 14, 3, generator=torch.Generator().manual_seed(0))
    result = probe_layers(vectors, [0], ["a"] * 10 + ["b"] * 4, max_iter=5)
    assert (result.num_train, result.num_test, result.chance_accuracy) == (10, 4, 0.75)


def test_fit_logistic_reaches_the_penalised_optimum():
    """At the optimum the gradient, written out by hand, vanishes: X^T (P - Y) / N + 2 wd W = 0."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 4, (60,), generator=g)
    weight, bias = fit_logistic(x, targets, 4, weight_decay=0.01, max_iter=200)
    xn, wn, bn = x.numpy(), weight.numpy(), bias.numpy()
    logits = xn @ wn + bn
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    residual = probs - np.eye(4)[targets.numpy()]  # (N, K)
    np.testing.assert_allclose(xn.T @ residual / 60 + 2 * 0.01 * wn, 0, atol=1e-6)
    np.testing.assert_allclose(residual.mean(0), 0, atol=1e-6)
    assert np.abs(wn).max() > 0.05  # not the trivial zero solution


def _write_features(directory: Path, vectors: torch.Tensor, paths: list[str], skipped=()) -> None:
    """A features directory by hand (mean-pooled layout), independent of the extractor."""
    directory.mkdir(parents=True)
    tensors = {f"k{i}": vectors[:, i].contiguous() for i in range(len(paths))}
    save_file(tensors, str(directory / "features-00000.safetensors"))
    rows = [f"{p}\tfeatures-00000.safetensors\tk{i}\t10\t0,4" for i, p in enumerate(paths)]
    (directory / "index.tsv").write_text("\n".join([INDEX_HEADER, *rows]) + "\n")
    (directory / "skipped.tsv").write_text(
        "".join(f"{p}\tcannot decode\n" for p in ("relative_path", *skipped))
    )


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    recipe.add_arguments(parser)
    return recipe.run(parser.parse_args(list(argv)))


def test_recipe_writes_json_and_plot(tmp_path, capsys):
    vectors, labels = _synthetic(60)
    paths = [f"spk/{i:03d}.wav" for i in range(60)]
    _write_features(tmp_path / "feats", vectors, paths, skipped=["bad.wav"])
    # Labels in another order than the index; the skipped file is labelled too.
    lines = [f"{p}\t{y}" for p, y in zip(paths, labels, strict=True)][::-1] + ["bad.wav\tlow"]
    (tmp_path / "labels.tsv").write_text("\n".join(lines) + "\n")
    assert _run(str(tmp_path / "feats"), "--labels", str(tmp_path / "labels.tsv")) == 0
    captured = capsys.readouterr()
    assert "<- best" in captured.out and "1 labelled items were skipped" in captured.err
    report = json.loads((tmp_path / "feats" / "probe" / "probe.json").read_text())
    assert [s["layer"] for s in report["scores"]] == [0, 4] and report["best_layer"] == 4
    assert report["skipped"] == ["bad.wav"] and report["num_train"] + report["num_test"] == 60
    direct = probe_layers(vectors, [0, 4], labels, seed=0)  # paths sort in index order here
    assert report["scores"][1]["accuracy"] == direct.scores[1].accuracy
    assert (tmp_path / "feats" / "probe" / "probe.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("spk/000.wav\tlow\nspk/001.wav low\n", "labels.tsv:2: expected 'relative_path<TAB>label'"),
        ("spk/000.wav\tlow\n\nspk/000.wav\tmid\n", "labels.tsv:3: 'spk/000.wav' is labelled twice"),
        ("spk/000.wav\tlow\nspk/999.wav\tmid\n", "labels.tsv:2: 'spk/999.wav' has no features"),
        ("spk/000.wav\tlow\nspk/001.wav\tlow\n", "at least 2 classes"),
        ("", "no labels"),
    ],
)
def test_label_file_errors_name_the_line(tmp_path, capsys, content, message):
    vectors, _ = _synthetic(6)
    _write_features(tmp_path / "feats", vectors, [f"spk/{i:03d}.wav" for i in range(6)])
    (tmp_path / "labels.tsv").write_text(content)
    assert _run(str(tmp_path / "feats"), "--labels", str(tmp_path / "labels.tsv")) == 2
    assert message in capsys.readouterr().err


def test_missing_files_are_named(tmp_path, capsys):
    assert _run(str(tmp_path), "--labels", str(tmp_path / "nope.tsv")) == 2
    assert "nope.tsv not found" in capsys.readouterr().err
    (tmp_path / "labels.tsv").write_text("a.wav\tx\n")
    assert _run(str(tmp_path / "feats"), "--labels", str(tmp_path / "labels.tsv")) == 2
    assert "index.tsv not found" in capsys.readouterr().err


def test_end_to_end_tone_pitch_classes(tmp_path):
    """Tones in 3 pitch classes -> tiny random model -> probe. A random model guarantees no
    particular layer, so only this is asserted: some layer decodes pitch clearly above chance."""
    rng = np.random.default_rng(0)
    centres_hz = {"low": 150.0, "mid": 450.0, "high": 1350.0}
    rows, labels = [], []
    for name, centre in centres_hz.items():
        for i in range(10):
            f0 = centre * 2 ** rng.uniform(-0.25, 0.25)
            t = np.arange(int(rng.uniform(0.4, 0.7) * 16000)) / 16000
            wav = 0.3 * np.sin(2 * np.pi * f0 * t + rng.uniform(0, 6.3))
            wav += 0.02 * rng.standard_normal(len(t))
            sf.write(tmp_path / f"{name}_{i}.wav", wav.astype(np.float32), 16000)
            rows.append((f"{name}_{i}.wav", len(t)))
            labels.append(f"{name}_{i}.wav\t{name}")
    write_manifest(
        tmp_path / "m.tsv", Manifest(tmp_path, [r[0] for r in rows], [r[1] for r in rows])
    )
    (tmp_path / "labels.tsv").write_text("\n".join(labels) + "\n")
    torch.manual_seed(0)
    model = Wav2Vec2Model.from_preset("tiny")
    torch.save(
        {"model": model.state_dict(), "config": {"model": to_dict(model.cfg)}}, tmp_path / "m.pt"
    )
    # Through the real entry point.
    extract_argv = ["extract", str(tmp_path / "m.pt"), str(tmp_path / "m.tsv")]
    assert cli.main(extract_argv + ["--out", str(tmp_path / "f"), "--quiet", "--pool", "mean"]) == 0
    assert cli.main(["probe", str(tmp_path / "f"), "--labels", str(tmp_path / "labels.tsv")]) == 0
    report = json.loads((tmp_path / "f" / "probe" / "probe.json").read_text())
    assert report["num_test"] == 9 and report["chance_accuracy"] == pytest.approx(1 / 3)
    assert max(s["accuracy"] for s in report["scores"]) >= 7 / 9
