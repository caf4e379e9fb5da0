"""Pitch tokens from Praat: tones of known frequency land on their level, on the model's grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from w2vkit.data.labels import frame_count
from w2vkit.data.pitch import NUM_PITCH_LEVELS, pitch_tokens, track_f0
from w2vkit.embed.layers import pitch_level_hz, pitch_to_tokens

pytest.importorskip("parselmouth")

SR = 16000
UNVOICED = NUM_PITCH_LEVELS


def level_hz(level: float) -> float:
    """Centre of a (fractional) level, from the definition: 50 Hz * 22 ** (level / 127)."""
    return 50.0 * 22.0 ** (level / 127)


def tone(freq_hz: float, seconds: float = 0.6) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


@pytest.mark.parametrize("level", [3, 28, 64, 89, 120])
@pytest.mark.parametrize("offset", [-0.35, 0.0, 0.35])
def test_a_tone_lands_on_its_level(level, offset):
    tokens = pitch_tokens(tone(level_hz(level + offset)))
    assert len(tokens) == frame_count(int(0.6 * SR))
    inner = tokens[2:-2]  # the first and last ~30 ms are outside Praat's analysis windows
    assert np.all(inner == level), (level, offset, np.unique(inner))


def test_f0_is_accurate_and_edges_and_silence_are_unvoiced():
    f0 = track_f0(tone(220.0))
    assert np.nanmax(np.abs(f0 - 220.0)) < 0.5
    assert np.isnan(f0[0])  # centre 12.5 ms: no full 60 ms window around it
    silence = pitch_tokens(np.zeros(SR, dtype=np.float32))
    assert silence.shape == (frame_count(SR),) and np.all(silence == UNVOICED)


def test_a_tone_that_changes_frequency_changes_level_at_the_switch():
    low, high = level_hz(40), level_hz(80)
    wav = np.concatenate([tone(low, 0.5), tone(high, 0.5)])
    tokens = pitch_tokens(wav)
    switch = 0.5 * SR  # frames whose centre is 40 ms or more from it see one tone only
    centres = np.arange(len(tokens)) * 320 + 200
    before, after = centres < switch - 640, centres > switch + 640
    assert np.all(tokens[before][2:] == 40) and np.all(tokens[after][:-2] == 80)


@pytest.mark.parametrize("num_samples", [0, 399, 400, 959, 960, 1000, 5000])
def test_any_length_gives_the_model_frame_count(num_samples):
    tokens = pitch_tokens(tone(200.0, num_samples / SR))
    assert tokens.shape == (frame_count(num_samples),) and tokens.dtype == np.int64
    if num_samples < 960:  # shorter than one 60 ms window: nothing can be voiced
        assert np.all(tokens == UNVOICED)


def test_level_centres_invert_the_tokens():
    tokens = torch.arange(NUM_PITCH_LEVELS + 1)
    hz = pitch_level_hz(tokens)
    assert math.isnan(hz[-1]) and abs(float(hz[0]) - 50.0) < 1e-9
    assert abs(float(hz[127]) - 1100.0) < 1e-9 and abs(float(hz[64]) - level_hz(64)) < 1e-9
    assert torch.equal(pitch_to_tokens(hz[None])[0], tokens)  # NaN -> unvoiced again
    with pytest.raises(
        ValueError, match=r"token id 130 at index \(0,\) is outside the table of 129"
    ):
        pitch_level_hz(torch.tensor([130]))
