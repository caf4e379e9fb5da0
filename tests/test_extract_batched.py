"""Batched, length-sorted extraction: the same features per file as one file at a time."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import audiogen
import numpy as np
import pytest
import soundfile as sf
import torch

from w2vkit import cli
from w2vkit.config import to_dict
from w2vkit.data.dataset import AudioDataset
from w2vkit.data.manifest import Manifest, write_manifest
from w2vkit.features.batching import BatchLimits, group_windows, padding_invariant, run_batch
from w2vkit.features.extract import extract_manifest, extract_utterance
from w2vkit.features.store import load_features, read_index
from w2vkit.model.config import preset
from w2vkit.model.feature_extractor import output_lengths
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.recipes import extract as recipe

WINDOW = 8000
"""max_samples of the chunked runs: tiny's 400-sample receptive field and 320 stride fit 24
frames, so a full window holds 23 * 320 + 400 = 7760 samples."""
FULL = 7760
LENGTHS = [300, 400, 3000, 3000, 5000, FULL, FULL, FULL + 1, WINDOW, 2 * FULL - 80, 20_000]
"""Shorter than one frame (skipped), one frame, equal pairs, exactly one full window, one sample
more, exactly max_samples, exactly two full windows (both 7760 samples), three windows."""


def _model(kind: str) -> Wav2Vec2Model:
    torch.manual_seed(0)
    cfg = preset("tiny")
    fe = cfg.feature_extractor
    fe = {
        "layer_norm": replace(fe, norm_mode="layer_norm", conv_bias=True),
        "group_norm": fe,
        "spectrogram": replace(fe, kind="spectrogram", spectrogram_channels=8),
    }[kind]
    return Wav2Vec2Model(replace(cfg, feature_extractor=fe)).eval()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Files of `LENGTHS` samples, each a different tone (a swapped item would show)."""
    root = tmp_path_factory.mktemp("batched")
    names = [f"utt_{i:02d}.wav" for i in range(len(LENGTHS))]
    for i, (name, length) in enumerate(zip(names, LENGTHS, strict=True)):
        sf.write(root / name, audiogen.tone(length, seed=i), 16_000, subtype="FLOAT")
    write_manifest(root / "train.tsv", Manifest(root, names, np.array(LENGTHS)))
    return root


def _batch_sizes(model: Wav2Vec2Model, shapes: list | None = None) -> list[tuple[int, bool]]:
    """(rows, padded) of every forward pass the model runs from now on; `shapes` gets (B, S)."""
    seen: list[tuple[int, bool]] = []
    original = model.extract_features

    def spy(wav, padding_mask=None, layer=None):
        seen.append((wav.shape[0], padding_mask is not None))
        if shapes is not None:
            shapes.append(tuple(wav.shape))
        return original(wav, padding_mask, layer)

    model.extract_features = spy  # type: ignore[method-assign]
    return seen


def test_group_windows_longest_first_equal_lengths_unless_padding_allowed():
    lengths = [5, 3, 5, 3, 4]
    assert group_windows(lengths, BatchLimits(2), pad=False) == [[0, 2], [4], [1, 3]]
    assert group_windows(lengths, BatchLimits(3), pad=True) == [[0, 2, 4], [1, 3]]
    # at most 10 padded samples: 2 x 5, then 2 x 4 (4 and 3 padded to 4), then the last 3
    assert group_windows(lengths, BatchLimits(8, 10), pad=True) == [[0, 2], [4, 1], [3]]
    assert group_windows([12, 5], BatchLimits(8, 10), pad=True) == [[0], [1]]  # too long: alone
    assert group_windows(lengths, BatchLimits(1), pad=True) == [[0], [2], [4], [1], [3]]
    with pytest.raises(ValueError, match="batch size must be >= 1, got 0"):
        BatchLimits(0)


def test_only_layer_norm_conv_extractors_pad():
    assert padding_invariant(_model("layer_norm").cfg.feature_extractor)
    assert not padding_invariant(_model("group_norm").cfg.feature_extractor)
    assert not padding_invariant(_model("spectrogram").cfg.feature_extractor)
    wavs = [torch.randn(4000), torch.randn(3000)]
    with pytest.raises(ValueError, match="conv/group_norm feature extractor changes valid frames"):
        run_batch(_model("group_norm"), wavs, [1])
    # The reason for the rule: padding moves a group-norm model's valid frames, not a layer-norm one's.
    for kind, moves in [("group_norm", True), ("spectrogram", True), ("layer_norm", False)]:
        model = _model(kind)
        with torch.no_grad():
            alone = model.extract_features(wavs[1][None]).hidden_states[2][0]  # (T, D)
            wav = torch.cat([wavs[1], torch.zeros(1000)])[None]  # (1, 4000)
            mask = (torch.arange(4000) >= 3000)[None]
            batched = model.extract_features(wav, mask).hidden_states[2][0, : alone.shape[0]]
        assert (not torch.allclose(batched, alone, atol=1e-4)) == moves, kind


@pytest.mark.parametrize("kind", ["layer_norm", "group_norm", "spectrogram"])
@pytest.mark.parametrize("max_samples", [None, WINDOW])
def test_batched_extraction_equals_one_file_at_a_time(corpus, tmp_path, kind, max_samples):
    model = _model(kind)
    dataset = AudioDataset(corpus / "train.tsv")
    layers = [0, 1, 2]
    seen = _batch_sizes(model)
    summary = extract_manifest(
        model, dataset, tmp_path, layers, max_samples=max_samples, batch_size=4, progress=False
    )
    passes = list(seen)
    assert summary.skipped == [("utt_00.wav", "too short (300 < 400 samples the model needs)")]
    rows = read_index(tmp_path)
    assert [row.relative_path for row in rows] == [
        f"utt_{i:02d}.wav" for i in np.argsort(-np.array(LENGTHS), kind="stable")[:-1]
    ]  # longest first, ties in manifest order
    stored = load_features(tmp_path)
    for row in rows:
        wav = dataset.load(int(row.relative_path[4:6]))
        assert wav is not None
        alone = extract_utterance(model, wav, layers, max_samples=max_samples)  # (L, T, D)
        conv_layers = model.cfg.feature_extractor.conv_layers
        assert row.num_frames == int(output_lengths(torch.tensor(wav.shape[0]), conv_layers))
        assert stored[row.relative_path].shape == alone.shape
        torch.testing.assert_close(stored[row.relative_path], alone, rtol=0, atol=1e-5)
    # Unpadded batches: whole files pair up (3000 x 2, FULL x 2); with windows, the first two
    # files decoded (20 000 and 2 * FULL - 80 samples) give four FULL windows.
    largest = 4 if kind == "layer_norm" or max_samples else 2
    assert max(rows for rows, _ in passes) == largest
    assert any(padded for _, padded in passes) == (kind == "layer_norm")


def test_long_file_windows_batch_together_for_group_norm():
    model = _model("group_norm")
    wav = torch.from_numpy(audiogen.tone(5 * FULL - 4 * 80 + 1234)[:, 0])  # 5 full windows + a tail
    seen = _batch_sizes(model)
    batched = extract_utterance(model, wav, [2], max_samples=WINDOW, batch_size=8)
    assert seen == [(5, False), (1, False)]
    alone = extract_utterance(model, wav, [2], max_samples=WINDOW)
    assert len(seen) == 2 + 6
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)


def test_bf16_compute_is_close_to_fp32_and_recorded(corpus, tmp_path):
    model = _model("layer_norm")
    checkpoint = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "config": {"model": to_dict(model.cfg)}}, checkpoint)
    parser = argparse.ArgumentParser()
    recipe.add_arguments(parser)
    common = [str(checkpoint), str(corpus / "train.tsv"), "--quiet", "--layers", "2"]
    out32, out16 = tmp_path / "fp32", tmp_path / "bf16"
    assert recipe.run(parser.parse_args([*common, "--out", str(out32)])) == 0
    argv = [*common, "--out", str(out16), "--dtype", "bf16", "--batch-size", "3"]
    assert recipe.run(parser.parse_args([*argv, "--storage-dtype", "float16"])) == 0
    meta = json.loads((out16 / "meta.json").read_text())
    assert (meta["dtype"], meta["compute_dtype"], meta["batch_size"]) == ("float16", "bfloat16", 3)
    full, half = load_features(out32, layer=2), load_features(out16, layer=2)
    assert set(full) == set(half)
    for path, expected in full.items():
        assert half[path].dtype == torch.float16
        error = (half[path].float() - expected).norm() / expected.norm()
        assert 1e-4 < error < 0.05, (path, error)  # bf16 did run, and stayed close


def test_bad_batch_options_are_usage_errors(corpus, tmp_path, capsys):
    base = ["extract", str(tmp_path / "none.pt"), str(corpus / "train.tsv")]
    base += ["--out", str(tmp_path / "f")]
    assert cli.main([*base, "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1, got 0" in capsys.readouterr().err
    assert cli.main([*base, "--max-batch-seconds", "-1"]) == 2
    assert "--max-batch-seconds must be >= 0" in capsys.readouterr().err


def test_max_batch_samples_bounds_every_padded_pass(corpus, tmp_path):
    model = _model("layer_norm")
    shapes: list[tuple[int, int]] = []
    _batch_sizes(model, shapes)
    dataset = AudioDataset(corpus / "train.tsv")
    extract_manifest(
        model, dataset, tmp_path, [2], batch_size=8, max_batch_samples=2 * WINDOW, progress=False
    )
    # Items are decoded longest first into groups of >= 16 000 samples, each group batched
    # within the limit: [20 000], [15 440 | 8 000], [7 761 + 7 760 | 7 760], then the rest
    # [5 000 + 3 000 + 3 000 (padded to 3 x 5 000) | 400] (the 300-sample file is skipped).
    assert shapes == [
        (1, 20_000),
        (1, 15_440),
        (1, 8000),
        (2, 7761),
        (1, 7760),
        (3, 5000),
        (1, 400),
    ]
    stored = load_features(tmp_path, layer=2)
    for i in range(1, len(LENGTHS)):
        wav = dataset.load(i)
        assert wav is not None
        alone = extract_utterance(model, wav, [2])[0]  # (T, D)
        torch.testing.assert_close(stored[f"utt_{i:02d}.wav"], alone, rtol=0, atol=1e-5)


@pytest.mark.gpu
def test_bf16_batched_extraction_on_cuda_is_close_to_fp32_on_cpu(corpus, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = _model("layer_norm")
    dataset = AudioDataset(corpus / "train.tsv")
    extract_manifest(model, dataset, tmp_path / "cpu", [2], progress=False)
    extract_manifest(
        model.cuda(), dataset, tmp_path / "gpu", [2], batch_size=4,
        compute_dtype=torch.bfloat16, progress=False,
    )  # fmt: skip
    expected, actual = load_features(tmp_path / "cpu", 2), load_features(tmp_path / "gpu", 2)
    assert set(actual) == set(expected)
    for path, features in expected.items():
        assert (actual[path] - features).norm() / features.norm() < 0.05, path
