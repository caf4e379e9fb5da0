"""f0 per model frame, and pitch tokens, from Praat's pitch tracker (praat-parselmouth).

Why Praat (through `praat-parselmouth`): it installs from binary wheels on Linux, macOS and
Windows with no compiler and no download at run time, it is maintained, and its autocorrelation
method (Boersma 1993) is the phoneticians' reference, accurate to well under a pitch level on
clean voiced speech. (pyworld needs a C++ build on install; torchcrepe loads network weights.)

Praat analyses 60 ms windows (3 periods of the 50 Hz floor) every 5 ms; each model frame takes
the Praat frame nearest to its centre sample (`w2vkit.data.labels.frame_centres`), so f0 and
tokens lie on the model's 20 ms grid, one value per frame. Frames whose centre is outside the
span Praat could analyse (the first and last ~30 ms, or all of a file shorter than 60 ms) are
unvoiced.
"""

from __future__ import annotations

import numpy as np
import torch

from w2vkit.data.audio import SAMPLE_RATE
from w2vkit.data.labels import ConvLayers, frame_centres
from w2vkit.embed.layers import pitch_to_tokens
from w2vkit.model.config import BASE_CONV_LAYERS

PITCH_FLOOR_HZ = 50.0  # the range of pitch_to_tokens' levels: speech and singing
PITCH_CEILING_HZ = 1100.0
NUM_PITCH_LEVELS = 128  # tokens 0..127 are levels, 128 is unvoiced
PRAAT_TIME_STEP_S = 0.005  # Praat frames every 5 ms: a model frame's centre is <= 2.5 ms away
_PERIODS_PER_WINDOW = 3.0  # Praat's autocorrelation window (6 with very_accurate, unused)


class PitchTrackerUnavailable(RuntimeError):
    """praat-parselmouth is not installed."""


def track_f0(wav: np.ndarray, conv_layers: ConvLayers = BASE_CONV_LAYERS) -> np.ndarray:
    """f0 in Hz at each model frame's centre; NaN where unvoiced. Shape: (S,) -> (T,) float64.

    `wav` is 16 kHz audio (`load_audio` resamples), the rate of the model's frame grid.
    """
    try:
        import parselmouth
    except ImportError as err:
        raise PitchTrackerUnavailable(
            "pitch tracking needs Praat from the `praat-parselmouth` package: "
            "pip install 'w2vkit[labels]' (or pip install praat-parselmouth)"
        ) from err
    centres_s = frame_centres(len(wav), conv_layers) / SAMPLE_RATE  # (T,)
    f0 = np.full(len(centres_s), np.nan)
    if len(wav) < _PERIODS_PER_WINDOW / PITCH_FLOOR_HZ * SAMPLE_RATE:
        return f0  # shorter than one analysis window: Praat refuses, nothing is voiced
    sound = parselmouth.Sound(np.asarray(wav, dtype=np.float64), sampling_frequency=SAMPLE_RATE)
    pitch = sound.to_pitch_ac(
        time_step=PRAAT_TIME_STEP_S,
        pitch_floor=PITCH_FLOOR_HZ,
        pitch_ceiling=PITCH_CEILING_HZ,
    )
    frequency = pitch.selected_array["frequency"]  # (F,) Hz, 0 = unvoiced
    nearest = np.rint((centres_s - pitch.x1) / pitch.dx).astype(np.int64)  # (T,) Praat frame
    analysed = (nearest >= 0) & (nearest < len(frequency))
    voiced = frequency[np.clip(nearest, 0, len(frequency) - 1)]
    f0[analysed] = voiced[analysed]
    f0[f0 <= 0] = np.nan
    return f0


def pitch_tokens(wav: np.ndarray, conv_layers: ConvLayers = BASE_CONV_LAYERS) -> np.ndarray:
    """Pitch token per model frame: 128 log-spaced levels over 50-1100 Hz, 128 = unvoiced.

    Shape: (S,) -> (T,) int64. See `pitch_to_tokens` for the levels.
    """
    f0 = torch.from_numpy(track_f0(wav, conv_layers))[None]  # (1, T)
    tokens = pitch_to_tokens(
        f0, num_levels=NUM_PITCH_LEVELS, fmin_hz=PITCH_FLOOR_HZ, fmax_hz=PITCH_CEILING_HZ
    )
    return tokens[0].numpy()  # (T,)
