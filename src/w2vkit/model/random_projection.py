"""BEST-RQ's targets (Chiu et al., 2022, arXiv:2202.01855): log-mel frames stacked to the encoder's
frame rate, normalised, then a frozen random projection and frozen random unit codebooks.

    wav (B, S) -> log-mel every H/k samples (window R)          (B, M, T2)
               -> k consecutive frames stacked per encoder frame (B, T, k*M)   frame t: 10-ms frames kt .. kt+k-1
               -> per utterance and channel to mean 0, variance 1 over time
               -> per codebook n: x @ P_n (Xavier init), l2-normalised        (B, T, N, d)
               -> index of the nearest unit codebook vector (cosine)           (B, T, N)

R and H are the receptive field and stride of `conv_layers` (400 and 320 samples for BASE, 20 ms
frames), the grid every consumer uses; with k = 2 the log-mel runs every 10 ms. Nothing here learns:
the projection and codebooks are buffers, saved with the model so a resumed run keeps them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from w2vkit.model.feature_extractor import frame_geometry
from w2vkit.model.spectrogram import log_mel


def stack_frames(features: Tensor, stack: int, num_frames: int) -> Tensor:
    """Frames [stack*t, stack*t + stack) side by side, for t < num_frames.

    Shape: features (B, M, T2) with T2 >= stack * num_frames -> (B, num_frames, stack * M),
    channel j * M + m holding channel m of frame stack * t + j."""
    batch, channels, _ = features.shape
    kept = features[:, :, : stack * num_frames]  # (B, M, stack * T)
    kept = kept.reshape(batch, channels, num_frames, stack)  # (B, M, T, stack)
    return kept.permute(0, 2, 3, 1).reshape(batch, num_frames, stack * channels)


def stacked_log_mel(
    wav: Tensor,
    conv_layers: list[tuple[int, int, int]],
    num_frames: int,
    *,
    num_mels: int = 80,
    stack: int = 2,
    sample_rate: int = 16000,
) -> Tensor:
    """Log-mel on the encoder's grid, `stack` sub-frames per frame. (B, S) -> (B, T, stack * M).

    The last frame's later sub-frames reach past the last window: the audio is zero-padded by
    (stack - 1) sub-frame hops so that every frame has all of them."""
    receptive, stride = frame_geometry(conv_layers)
    if stride % stack:
        raise ValueError(f"best_rq.stack={stack} does not divide the frame stride {stride}")
    hop = stride // stack
    n_fft = 1 << (receptive - 1).bit_length()
    padded = F.pad(wav.float(), (0, hop * (stack - 1)))
    mel = log_mel(
        padded,
        num_mels=num_mels,
        sample_rate=sample_rate,
        window_samples=receptive,
        hop_samples=hop,
        n_fft=n_fft,
    )  # (B, M, T2)
    return stack_frames(mel, stack, num_frames)


class RandomProjectionQuantizer(nn.Module):
    """Frozen projection and codebooks; `forward` maps features to code indices.

    Shape: x (B, T, F) -> (B, T, N) long, N codebooks of `codebook_size` entries.
    The buffers draw from torch's global generator at construction (the recipe seeds it)."""

    def __init__(
        self, input_dim: int, codebook_dim: int, codebook_size: int, num_codebooks: int
    ) -> None:
        super().__init__()
        projection = torch.empty(num_codebooks, input_dim, codebook_dim)
        for matrix in projection:
            nn.init.xavier_uniform_(matrix)
        codebooks = F.normalize(torch.randn(num_codebooks, codebook_size, codebook_dim), dim=-1)
        self.register_buffer("projection", projection)  # (N, F, d)
        self.register_buffer("codebooks", codebooks)  # (N, V, d), unit rows

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):  # nearest neighbours in fp32
            projected = torch.einsum("btf,nfd->btnd", x.float(), self.projection)
            projected = F.normalize(projected, dim=-1)
            # On unit vectors the largest cosine is the smallest l2 distance.
            similarity = torch.einsum("btnd,nvd->btnv", projected, self.codebooks)
        return similarity.argmax(-1)


__all__ = ["RandomProjectionQuantizer", "stack_frames", "stacked_log_mel"]
