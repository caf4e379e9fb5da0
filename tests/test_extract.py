"""`w2vkit extract`: stored features against the model run directly, index, pooling, chunking."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import audiogen
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from w2vkit import cli
from w2vkit.config import to_dict
from w2vkit.data.audio import load_audio, normalize
from w2vkit.data.dataset import AudioDataset
from w2vkit.data.manifest import Manifest, write_manifest
from w2vkit.features.extract import extract_manifest, extract_utterance, parse_layers, plan_chunks
from w2vkit.features.store import INDEX_HEADER, load_features, read_index
from w2vkit.interop import ModelRecord, hf
from w2vkit.model.config import preset
from w2vkit.model.feature_extractor import output_lengths
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.recipes import extract as recipe


def _tiny_model(seed: int = 0, **transformer) -> Wav2Vec2Model:
    torch.manual_seed(seed)
    cfg = preset("tiny")
    cfg = replace(cfg, transformer=replace(cfg.transformer, **transformer))
    return Wav2Vec2Model(cfg).eval()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """A w2vkit checkpoint of a random tiny model, 4 good files, one that is not audio.

    The model has dropout and LayerDrop: features equal to the eval-mode model's show that
    extraction runs in eval mode."""
    root = tmp_path_factory.mktemp("extract")
    model = _tiny_model(dropout_prob=0.2, attention_dropout_prob=0.2, layerdrop_prob=0.3)
    checkpoint = root / "tiny.pt"
    torch.save({"model": model.state_dict(), "config": {"model": to_dict(model.cfg)}}, checkpoint)
    paths = audiogen.make_corpus(root / "audio", 3, (0.5, 1.2), seed=1)
    paths.append(audiogen.write_tone(root / "audio" / "sub" / "stereo.wav", 0.7, 22_050, 2))
    broken = root / "audio" / "broken.wav"
    broken.write_bytes(b"RIFF this is not a wav file at all" * 10)
    relative = [p.relative_to(root / "audio").as_posix() for p in paths]
    frames = [sf.info(p).frames for p in paths]
    manifest = root / "train.tsv"
    write_manifest(manifest, Manifest(root / "audio", relative + ["broken.wav"], frames + [8000]))
    return {
        "root": root,
        "model": model,
        "checkpoint": checkpoint,
        "manifest": manifest,
        "paths": paths,
        "relative": relative,
    }


def _run(corpus: dict, out: Path, *options: str) -> int:
    argv = [str(corpus["checkpoint"]), str(corpus["manifest"]), "--out", str(out), "--quiet"]
    return cli.main(["extract", *argv, *options])


def _direct(model: Wav2Vec2Model, path: Path) -> list[torch.Tensor]:
    with torch.no_grad():
        wav = torch.from_numpy(load_audio(path))[None]  # (1, S)
        return [h[0] for h in model.extract_features(wav).hidden_states]  # L+1 x (T, D)


def test_frame_features_equal_direct_model_and_index(corpus, tmp_path):
    out = tmp_path / "feats"
    assert _run(corpus, out, "--max-seconds", "0", "--shard-mb", "0.03") == 0
    rows = read_index(out)
    assert (out / "index.tsv").read_text().splitlines()[0] == INDEX_HEADER
    longest_first = sorted(
        corpus["relative"], key=lambda p: -sf.info(corpus["root"] / "audio" / p).frames
    )
    assert [r.relative_path for r in rows] == longest_first  # broken left out
    assert len({r.shard for r in rows}) > 1  # 30 KiB shards: more than one
    paths = dict(zip(corpus["relative"], corpus["paths"], strict=True))
    for row in rows:
        path = paths[row.relative_path]
        expected = torch.stack(_direct(corpus["model"], path))  # (3, T, D)
        num_samples = torch.tensor(load_audio(path).shape[0])
        assert row.num_frames == int(
            output_lengths(num_samples, corpus["model"].cfg.feature_extractor.conv_layers)
        )
        assert row.layers == (0, 1, 2)
        stored = load_file(str(out / row.shard))[row.key]  # plain safetensors, no w2vkit reader
        assert stored.dtype == torch.float32 and stored.shape == (3, row.num_frames, 64)
        assert torch.equal(stored, expected)  # bit-exact in float32
    skipped = (out / "skipped.tsv").read_text().splitlines()
    assert skipped == ["relative_path\treason", "broken.wav\tcannot decode"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["layers"] == [0, 1, 2] and meta["num_skipped"] == 1 and meta["normalize"] is False
    assert set(load_features(out)) == set(corpus["relative"])


def test_mean_pool_layer_subset_and_float16(corpus, tmp_path):
    assert _run(corpus, tmp_path / "frames", "--layers", "0,2") == 0
    assert _run(corpus, tmp_path / "mean", "--layers", "2,0", "--pool", "mean") == 0
    assert _run(corpus, tmp_path / "half", "--layers", "2", "--storage-dtype", "float16") == 0
    frames = load_features(tmp_path / "frames")
    means = load_features(tmp_path / "mean")
    half = load_features(tmp_path / "half", layer=2)
    for relative, path in zip(corpus["relative"], corpus["paths"], strict=True):
        direct = _direct(corpus["model"], path)
        assert torch.equal(frames[relative], torch.stack([direct[0], direct[2]]))
        assert means[relative].shape == (2, 64)  # layers sorted: 0, 2
        torch.testing.assert_close(means[relative], frames[relative].mean(dim=1), rtol=0, atol=1e-6)
        assert half.get(relative).dtype == torch.float16
        assert torch.equal(half[relative], direct[2].half())
    assert read_index(tmp_path / "mean")[0].layers == (0, 2)


def test_existing_output_needs_force_and_bad_arguments(corpus, tmp_path, capsys):
    out = tmp_path / "feats"
    assert _run(corpus, out, "--layers", "1") == 0
    assert _run(corpus, out, "--layers", "1") == 2
    assert "--force" in capsys.readouterr().err
    assert _run(corpus, out, "--layers", "2", "--force") == 0
    assert read_index(out)[0].layers == (2,)
    assert _run(corpus, tmp_path / "x", "--layers", "3") == 2
    assert "0 (encoder input) to 2" in capsys.readouterr().err
    missing = corpus["root"] / "missing.pt"
    args = [str(missing), str(corpus["manifest"]), "--out", str(tmp_path / "y")]
    assert cli.main(["extract", *args]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_parse_layers():
    assert parse_layers("all", 12) == list(range(13))
    assert parse_layers("12, 6,6", 12) == [6, 12]
    with pytest.raises(ValueError, match="comma-separated"):
        parse_layers("6;12", 12)
    with pytest.raises(ValueError, match="0 \\(encoder input\\) to 12"):
        parse_layers("13", 12)


def test_pre_layer_norm_partial_run_equals_full_run():
    """Stopping after layer k must give the states of a full pass (final LN only on layer L)."""
    model = _tiny_model(layer_norm_first=True)
    wav = torch.from_numpy(audiogen.tone(9000)[:, 0])
    with torch.no_grad():
        full = model.extract_features(wav[None]).hidden_states
    assert torch.equal(extract_utterance(model, wav, [1])[0], full[1][0])
    assert torch.equal(extract_utterance(model, wav, [0, 2]), torch.stack([full[0][0], full[2][0]]))
    # The final LayerNorm (weight 1, bias 0 at init) made the last state zero-mean per frame only.
    assert full[2][0].mean(dim=-1).abs().max() < 1e-5 < full[1][0].mean(dim=-1).abs().max()


@pytest.mark.parametrize("num_samples", [400, 401, 16_000, 47_999, 48_321])
def test_plan_chunks_keeps_the_whole_file_frame_grid(num_samples):
    conv = preset("tiny").feature_extractor.conv_layers
    total = int(output_lengths(torch.tensor(num_samples), conv))
    chunks = plan_chunks(num_samples, conv, max_samples=8000)
    assert chunks[0][2] == 0 and chunks[-1][3] == total
    for (s0, s1, f0, f1), nxt in zip(chunks, chunks[1:] + [None], strict=True):
        assert s0 == 320 * f0 and s1 - s0 <= 8000  # windows start on the frame grid
        assert int(output_lengths(torch.tensor(s1 - s0), conv)) == f1 - f0
        if nxt is not None:
            assert nxt[2] == f1
    assert plan_chunks(399, conv, 8000) == []


def test_chunked_extraction_matches_windows_run_alone():
    # layer-norm extractor: no normalisation over time, so conv features are window-independent.
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg = replace(cfg, feature_extractor=replace(cfg.feature_extractor, norm_mode="layer_norm"))
    model = Wav2Vec2Model(cfg).eval()
    wav = torch.from_numpy(audiogen.tone(40_000)[:, 0])  # 2.5 s, windows of 1 s
    states = extract_utterance(model, wav, [0, 2], max_samples=16_000)
    with torch.no_grad():
        whole = model.extract_features(wav[None])
        conv_chunks = [
            model.extract_features(wav[None, s0:s1]).features[0]
            for s0, s1, _, _ in plan_chunks(40_000, cfg.feature_extractor.conv_layers, 16_000)
        ]
        first = model.extract_features(wav[None, : 15_680 + 80]).hidden_states
    assert states.shape == (2, whole.features.shape[1], 64)
    torch.testing.assert_close(torch.cat(conv_chunks), whole.features[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(states[:, :49], torch.stack([first[0][0], first[2][0]]))
    assert not torch.allclose(states[1], whole.hidden_states[2][0])  # context differs: documented


def test_hf_directory_without_heads_and_recorded_normalisation(corpus, tmp_path):
    """An HF `Wav2Vec2Model` directory (no pretraining heads) that records do_normalize=true:
    the features are those of the same weights on per-utterance normalised audio."""
    model = corpus["model"]
    state = {k: v for k, v in model.state_dict().items()}
    hf.save_hf(ModelRecord(model.cfg, state, normalize=True), tmp_path / "hf", heads=False)
    parser = argparse.ArgumentParser()
    recipe.add_arguments(parser)
    argv = [str(tmp_path / "hf"), str(corpus["manifest"]), "--out", str(tmp_path / "f"), "--quiet"]
    assert recipe.run(parser.parse_args(argv + ["--layers", "2"])) == 0
    assert json.loads((tmp_path / "f" / "meta.json").read_text())["normalize"] is True
    stored = load_features(tmp_path / "f", layer=2)
    path = corpus["paths"][0]
    with torch.no_grad():
        wav = torch.from_numpy(normalize(load_audio(path)))[None]
        expected = model.extract_features(wav).hidden_states[2][0]
    torch.testing.assert_close(stored[corpus["relative"][0]], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, _direct(model, path)[2], atol=1e-3)  # normalising matters


def test_float16_overflow_is_skipped_not_stored(corpus, tmp_path):
    model = _tiny_model()
    with torch.no_grad():
        model.encoder.norm.weight.mul_(1e5)  # post-LN: layer 0 = this norm's output, > 65504
    dataset = AudioDataset(corpus["manifest"])
    summary = extract_manifest(
        model, dataset, tmp_path, [0], storage_dtype=torch.float16, progress=False
    )
    assert summary.num_items == 0
    reasons = dict(summary.skipped)
    assert reasons[corpus["relative"][0]] == "non-finite features in float16"
    assert reasons["broken.wav"] == "cannot decode"
    summary = extract_manifest(model, dataset, tmp_path, [0, 1], progress=False)  # float32 fits
    assert summary.num_items == 4 and read_index(tmp_path)[0].layers == (0, 1)


def test_model_that_never_masks_and_has_no_heads_extracts(corpus, tmp_path):
    """time_prob = channel_prob = 0: an HF encoder keeps no mask embedding; extraction needs none."""
    model = corpus["model"]
    cfg = replace(model.cfg, masking=replace(model.cfg.masking, time_prob=0.0))
    state = {
        k: v
        for k, v in model.state_dict().items()
        if not k.startswith(("masker.", "quantizer.", "target_proj.", "context_proj."))
    }
    checkpoint = tmp_path / "encoder.pt"
    torch.save({"model": state, "config": {"model": to_dict(cfg)}}, checkpoint)
    parser = argparse.ArgumentParser()
    recipe.add_arguments(parser)
    argv = [str(checkpoint), str(corpus["manifest"]), "--out", str(tmp_path / "f"), "--quiet"]
    assert recipe.run(parser.parse_args(argv + ["--layers", "2"])) == 0
    stored = load_features(tmp_path / "f", layer=2)
    torch.testing.assert_close(stored[corpus["relative"][0]], _direct(model, corpus["paths"][0])[2])


def test_max_seconds_shorter_than_a_frame_is_a_usage_error(corpus, tmp_path, capsys):
    assert _run(corpus, tmp_path / "f", "--max-seconds", "0.01") == 2
    assert "shorter than one frame" in capsys.readouterr().err
