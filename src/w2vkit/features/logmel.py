"""Log-mel spectrogram on the conv encoder's frame grid: the baseline a pretrained model must beat.

Frame i is computed from samples [stride * i, stride * i + receptive_field), exactly the samples of
model frame i (for wav2vec 2.0 at 16 kHz: a 25 ms Hann window every 20 ms), and there are as many
frames as the model gives (`output_lengths`) for every input length. The computation is the
spectrogram front-end's own (`w2vkit.model.spectrogram.log_mel`): each window zero-padded to the
next power of two for the FFT (512 points), its power summed through 80 triangular filters on the
HTK mel scale from 0 Hz to the Nyquist frequency (peak weight 1), then log(power + 1e-6).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from w2vkit.model import spectrogram
from w2vkit.model.feature_extractor import frame_geometry, output_lengths

NUM_MELS = 80


def log_mel(
    wav: np.ndarray | torch.Tensor,
    conv_layers: Sequence[tuple[int, int, int]],
    *,
    sample_rate: int = 16_000,
    num_mels: int = NUM_MELS,
) -> np.ndarray:
    """Shape: wav (S,) -> (T, num_mels) float32, T = the model's frame count for S samples."""
    samples = torch.as_tensor(np.asarray(wav, dtype=np.float32)).reshape(1, -1)  # (1, S)
    receptive, stride = frame_geometry(conv_layers)
    num_frames = int(output_lengths(torch.tensor(samples.shape[1]), list(conv_layers)))
    if num_frames == 0:
        return np.zeros((0, num_mels), dtype=np.float32)
    needed = stride * (num_frames - 1) + receptive
    samples = torch.nn.functional.pad(samples, (0, max(needed - samples.shape[1], 0)))
    mel = spectrogram.log_mel(
        samples,
        num_mels=num_mels,
        sample_rate=sample_rate,
        window_samples=receptive,
        hop_samples=stride,
        n_fft=1 << (receptive - 1).bit_length(),
    )  # (1, M, T)
    return mel[0, :, :num_frames].T.contiguous().numpy()
