"""Kaldi-style MFCCs with deltas: HuBERT iteration 1's k-means input (39 values per 10 ms).

fairseq's `dump_mfcc_feature.py` calls torchaudio's Kaldi `mfcc` with its defaults (25 ms window,
10 ms hop, no edge padding, DC removal, pre-emphasis 0.97, Povey window, 23 mel bins from 20 Hz to
Nyquist, 13 cepstra with liftering 22, C0 kept, no energy, no dither), then appends the first and
second deltas (5-frame window). This is the same computation in torch, without torchaudio.
Frame j covers samples [160 j, 160 j + 400): a file of S samples gives 1 + (S - 400) // 160 frames,
so the labels come at 100 Hz (`hubert.label_rate: 100`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

WINDOW, HOP, NUM_FFT = 400, 160, 512
"""25 ms window, 10 ms hop at 16 kHz; the window zero-padded to the next power of two."""
NUM_MELS, NUM_CEPS, LIFTER = 23, 13, 22.0
LOW_HZ = 20.0
PREEMPHASIS = 0.97
DELTA_WINDOW = 2
"""Frames either side of a delta (torchaudio `compute_deltas(win_length=5)`)."""
FEATURE_DIM = 3 * NUM_CEPS
LABEL_RATE = 100.0


def _mel(hz: Tensor) -> Tensor:
    return 1127.0 * torch.log1p(hz / 700.0)


def mel_filterbank(sample_rate: int) -> Tensor:
    """Kaldi's triangular filters, equally spaced on the mel scale. -> (NUM_MELS, NUM_FFT // 2)."""
    low, high = _mel(torch.tensor(LOW_HZ)), _mel(torch.tensor(sample_rate / 2))
    edges = low + torch.arange(NUM_MELS + 2, dtype=torch.float64) * (high - low) / (NUM_MELS + 1)
    # Kaldi leaves out the Nyquist bin: NUM_FFT / 2 bins from 0 Hz.
    bins = _mel(torch.arange(NUM_FFT // 2, dtype=torch.float64) * sample_rate / NUM_FFT)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (M, 1)
    rising = (bins - left) / (centre - left)
    falling = (right - bins) / (right - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)  # (M, F)


def _dct_lifter() -> Tensor:
    """Orthonormal DCT-II rows 0..12 with Kaldi's cepstral liftering. -> (NUM_CEPS, NUM_MELS)."""
    n = torch.arange(NUM_MELS, dtype=torch.float64)
    k = torch.arange(NUM_CEPS, dtype=torch.float64)[:, None]
    dct = torch.cos(math.pi / NUM_MELS * (n + 0.5) * k) * math.sqrt(2.0 / NUM_MELS)
    dct[0] /= math.sqrt(2.0)
    lifter = 1.0 + 0.5 * LIFTER * torch.sin(math.pi * k / LIFTER)  # (C, 1)
    return dct * lifter


def deltas(x: Tensor) -> Tensor:
    """Regression deltas over time with edge frames repeated. (T, D) -> (T, D)."""
    padded = torch.cat(
        [x[:1].expand(DELTA_WINDOW, -1), x, x[-1:].expand(DELTA_WINDOW, -1)]
    )  # (T + 4, D)
    num_frames = x.shape[0]
    out = torch.zeros_like(x)
    for k in range(1, DELTA_WINDOW + 1):
        ahead = padded[DELTA_WINDOW + k : DELTA_WINDOW + k + num_frames]
        behind = padded[DELTA_WINDOW - k : DELTA_WINDOW - k + num_frames]
        out += k * (ahead - behind)
    return out / (2 * sum(k * k for k in range(1, DELTA_WINDOW + 1)))


def mfcc_features(wav: Tensor, sample_rate: int = 16000) -> Tensor:
    """MFCC + delta + delta-delta of one waveform. (S,) -> (T, 39) fp32, T = 1 + (S - 400) // 160."""
    if wav.ndim != 1 or wav.shape[0] < WINDOW:
        raise ValueError(
            f"need a 1-D waveform of at least {WINDOW} samples, got {tuple(wav.shape)}"
        )
    frames = wav.double().unfold(0, WINDOW, HOP)  # (T, W)
    frames = frames - frames.mean(-1, keepdim=True)
    # Pre-emphasis, the first sample against itself (Kaldi).
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - PREEMPHASIS * previous
    n = torch.arange(WINDOW, dtype=torch.float64)
    povey = (0.5 - 0.5 * torch.cos(2 * math.pi * n / (WINDOW - 1))) ** 0.85
    power = torch.fft.rfft(frames * povey, n=NUM_FFT).abs().pow(2)[:, : NUM_FFT // 2]  # (T, F)
    mel = power @ mel_filterbank(sample_rate).T  # (T, M)
    log_mel = torch.log(mel.clamp(min=torch.finfo(torch.float32).eps))
    ceps = log_mel @ _dct_lifter().T  # (T, 13)
    first = deltas(ceps)
    return torch.cat([ceps, first, deltas(first)], dim=1).float()  # (T, 39)


__all__ = ["FEATURE_DIM", "LABEL_RATE", "deltas", "mel_filterbank", "mfcc_features"]
