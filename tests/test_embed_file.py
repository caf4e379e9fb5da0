"""`w2vkit.embed_file`: one recording -> (T, D), against decoding, resampling and running by hand."""

from __future__ import annotations

from dataclasses import replace

import audiogen
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

import w2vkit
from w2vkit.model.config import preset
from w2vkit.model.wav2vec2 import Wav2Vec2Model


@pytest.fixture(scope="module")
def model() -> Wav2Vec2Model:
    torch.manual_seed(0)
    cfg = preset("tiny")  # dropout on: a forward pass in train mode would differ
    cfg = replace(cfg, transformer=replace(cfg.transformer, dropout_prob=0.3))
    return Wav2Vec2Model(cfg)


def _by_hand(model: Wav2Vec2Model, stereo_8k: np.ndarray, layer: int, normalized: bool):
    """Average channels, soxr to 16 kHz, optional utterance normalisation, one full pass."""
    wav = soxr.resample(stereo_8k.mean(axis=1), 8000, 16000, quality="HQ")
    if normalized:
        wav = (wav - wav.mean()) / np.sqrt(wav.var() + 1e-5)
    model.eval()
    with torch.no_grad():
        states = model.extract_features(torch.tensor(wav, dtype=torch.float32)[None]).hidden_states
    return states[layer][0].numpy()


@pytest.mark.parametrize("normalized", [False, True])
def test_8khz_stereo_file_equals_manual_resample_and_extract(model, tmp_path, normalized):
    path = audiogen.write_tone(tmp_path / "a.wav", 1.3, sample_rate=8000, channels=2, seed=3)
    stereo, rate = sf.read(path, dtype="float32", always_2d=True)  # (S, 2) at 8 kHz
    assert rate == 8000 and stereo.shape[1] == 2
    model.normalize_input = normalized  # what load_model sets from the checkpoint
    model.train()
    try:
        for layer in (0, 1, model.cfg.transformer.num_layers):
            got = w2vkit.embed_file(model, path, layer=layer)  # in eval mode: no dropout
            assert model.training  # restored
            want = _by_hand(model, stereo, layer, normalized)
            assert isinstance(got, np.ndarray) and got.dtype == np.float32
            assert got.shape == want.shape == (64, model.cfg.transformer.model_dim)  # 1.3 s
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
            model.train()
    finally:
        model.normalize_input = False


def test_array_input_equals_file_input_and_default_layer_is_the_last(model, tmp_path):
    path = audiogen.write_tone(tmp_path / "b.wav", 0.9, sample_rate=8000, channels=2, seed=4)
    stereo, _ = sf.read(path, dtype="float32")
    pcm, _ = sf.read(path, dtype="int16")
    from_file = w2vkit.embed_file(model, path)
    last = w2vkit.embed_file(model, path, layer=model.cfg.transformer.num_layers)
    np.testing.assert_array_equal(from_file, last)
    np.testing.assert_array_equal(w2vkit.embed_file(model, stereo, 8000), from_file)
    np.testing.assert_array_equal(w2vkit.embed_file(model, pcm, 8000), from_file)  # int16 / 2**15
    as_torch = w2vkit.embed_file(model, torch.from_numpy(stereo), 8000, return_tensors="pt")
    assert isinstance(as_torch, torch.Tensor)
    np.testing.assert_array_equal(as_torch.numpy(), from_file)


def test_long_input_runs_in_windows_with_the_frames_of_one_pass(model):
    wav = audiogen.tone(16000 * 3, seed=5)[:, 0]  # 3 s at 16 kHz
    whole = w2vkit.embed_file(model, wav, 16000, max_seconds=None)
    windows = w2vkit.embed_file(model, wav, 16000, max_seconds=1.0)
    assert windows.shape == whole.shape == (149, model.cfg.transformer.model_dim)
    assert not np.allclose(windows, whole, atol=1e-4)  # attention does not cross window edges
    # The first window: 49 frames = (16000 - 400) // 320 + 1, from samples [0, 48 * 320 + 400).
    first = w2vkit.embed_file(model, wav[:15760], 16000, max_seconds=None)
    assert first.shape[0] == 49
    np.testing.assert_allclose(windows[:49], first, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("audio", "rate", "message"),
    [
        (np.zeros((2, 16000), np.float32), 16000, r"\(samples, channels\), got shape \(2, 16000\)"),
        (np.zeros(16000, np.float32), None, "sample_rate is required with an array"),
        (np.zeros(16000, np.uint8), 16000, "float or signed integer samples, got uint8"),
        (np.zeros(100, np.float32), 16000, "100 samples give no frame"),
    ],
)
def test_bad_input_is_a_clear_error(model, audio, rate, message):
    with pytest.raises(ValueError, match=message):
        w2vkit.embed_file(model, audio, rate)


def test_a_file_with_a_sample_rate_and_a_bad_layer_are_errors(model, tmp_path):
    path = audiogen.write_tone(tmp_path / "c.wav", 0.5)
    with pytest.raises(ValueError, match="the file's header says its rate"):
        w2vkit.embed_file(model, path, 16000)
    with pytest.raises(ValueError, match="out of range: the model has layers 0"):
        w2vkit.embed_file(model, path, layer=99)
