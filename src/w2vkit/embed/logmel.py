"""Log-mel spectrogram on the conv encoder's frame grid: the baseline a pretrained model must beat.

Frame i is computed from samples [stride * i, stride * i + receptive_field), exactly the samples of
model frame i (for wav2vec 2.0 at 16 kHz: a 25 ms Hann window every 20 ms), and there are as many
frames as the model gives (`output_lengths`) for every input length. Each window is zero-padded to
the next power of two for the FFT (512 points), its power spectrum is summed through 80 triangular
filters on the HTK mel scale from 0 Hz to the Nyquist frequency (peak weight 1), and the natural
log is taken with a floor of 1e-10.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from w2vkit.embed.extract import frame_geometry
from w2vkit.model.feature_extractor import output_lengths

NUM_MELS = 80
LOG_FLOOR = 1e-10


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(num_mels: int, num_fft: int, sample_rate: int) -> np.ndarray:
    """Triangular filters, peak 1, centres equally spaced in mel. Shape: -> (num_mels, F), F = num_fft // 2 + 1."""
    edges_hz = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2), num_mels + 2))  # (M + 2,)
    bins_hz = np.arange(num_fft // 2 + 1) * sample_rate / num_fft  # (F,)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bins_hz - lower) / (centre - lower)  # (M, F)
    falling = (upper - bins_hz) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None)


def log_mel(
    wav: np.ndarray | torch.Tensor,
    conv_layers: Sequence[tuple[int, int, int]],
    *,
    sample_rate: int = 16_000,
    num_mels: int = NUM_MELS,
) -> np.ndarray:
    """Shape: wav (S,) -> (T, num_mels) float32, T = the model's frame count for S samples."""
    wav = np.asarray(wav, dtype=np.float64).reshape(-1)
    receptive, stride = frame_geometry(conv_layers)
    num_frames = int(output_lengths(torch.tensor(wav.shape[0]), list(conv_layers)))
    if num_frames == 0:
        return np.zeros((0, num_mels), dtype=np.float32)
    needed = stride * (num_frames - 1) + receptive
    wav = np.pad(wav, (0, max(needed - wav.shape[0], 0)))  # never needed for standard strides
    windows = np.lib.stride_tricks.sliding_window_view(wav, receptive)[::stride][:num_frames]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(receptive) / receptive)  # periodic
    num_fft = 1 << (receptive - 1).bit_length()
    power = np.abs(np.fft.rfft(windows * hann, n=num_fft, axis=1)) ** 2  # (T, F)
    mel = power @ mel_filterbank(num_mels, num_fft, sample_rate).T  # (T, M)
    return np.log(np.maximum(mel, LOG_FLOOR)).astype(np.float32)
