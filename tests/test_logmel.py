"""Log-mel baseline: equal to a slow explicit computation, on the model's frame grid for any length."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from w2vkit.features.logmel import log_mel
from w2vkit.model.config import BASE_CONV_LAYERS, tiny
from w2vkit.model.feature_extractor import output_lengths
from w2vkit.model.wav2vec2 import Wav2Vec2Model


def _slow_log_mel(wav: np.ndarray, num_mels: int = 80, sample_rate: int = 16_000) -> np.ndarray:
    """Frame by frame, with an explicit DFT sum and the triangles written out band by band."""
    window, hop, num_fft = 400, 320, 512
    num_frames = (len(wav) - window) // hop + 1

    def mel(f):
        return 2595 * math.log10(1 + f / 700)

    top = mel(sample_rate / 2)
    edges = [700 * (10 ** (top * i / (num_mels + 1) / 2595) - 1) for i in range(num_mels + 2)]
    n = np.arange(num_fft)
    out = np.zeros((num_frames, num_mels))
    for t in range(num_frames):
        frame = np.zeros(num_fft)
        for i in range(window):
            frame[i] = wav[hop * t + i] * (0.5 - 0.5 * math.cos(2 * math.pi * i / window))
        power = []
        for k in range(num_fft // 2 + 1):
            re = np.sum(frame * np.cos(2 * np.pi * k * n / num_fft))
            im = -np.sum(frame * np.sin(2 * np.pi * k * n / num_fft))
            power.append(re * re + im * im)
        for m in range(num_mels):
            lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
            total = 0.0
            for k, p in enumerate(power):
                f = k * sample_rate / num_fft
                if lo <= f <= mid:
                    total += p * (f - lo) / (mid - lo)
                elif mid < f <= hi:
                    total += p * (hi - f) / (hi - mid)
            out[t, m] = math.log(max(total, 1e-10))
    return out


def test_log_mel_equals_the_slow_explicit_computation():
    rng = np.random.default_rng(0)
    wav = 0.3 * np.sin(2 * np.pi * 440 * np.arange(1100) / 16000) + 0.05 * rng.normal(size=1100)
    fast = log_mel(wav, BASE_CONV_LAYERS)
    assert fast.shape == (3, 80) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, _slow_log_mel(wav), rtol=1e-4, atol=1e-4)


def test_a_tone_peaks_in_the_band_around_its_frequency():
    wav = np.sin(2 * np.pi * 1000 * np.arange(8000) / 16000)
    peak = int(np.argmax(log_mel(wav, BASE_CONV_LAYERS).mean(0)))
    mel_1khz = 2595 * math.log10(1 + 1000 / 700)
    centres = [2595 * math.log10(1 + 8000 / 700) * (m + 1) / 81 for m in range(80)]
    assert peak == int(np.argmin(np.abs(np.array(centres) - mel_1khz)))


def test_frame_count_is_the_models_for_every_length():
    lengths = torch.arange(0, 3000)  # every length up to 3000 samples, then a few long ones
    lengths = torch.cat([lengths, torch.tensor([15_999, 16_000, 16_001, 16_319, 16_320, 48_123])])
    expected = output_lengths(lengths, BASE_CONV_LAYERS)
    zeros = np.zeros(int(lengths.max()))
    got = [log_mel(zeros[: int(n)], BASE_CONV_LAYERS).shape[0] for n in lengths]
    assert got == expected.tolist()


@pytest.mark.parametrize("num_samples", [400, 719, 720, 1039, 5555, 16_000])
def test_frame_count_matches_the_real_model(num_samples):
    cfg = tiny()
    model = Wav2Vec2Model(cfg).eval()
    wav = torch.randn(1, num_samples, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        frames = model.extract_features(wav).hidden_states[-1].shape[1]
    assert log_mel(wav[0].numpy(), cfg.feature_extractor.conv_layers).shape[0] == frames
