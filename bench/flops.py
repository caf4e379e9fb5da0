"""Analytic FLOP count of a wav2vec 2.0 forward pass (multiply-adds x 2), for model FLOP utilisation.

    forward = conv encoder + positional conv + Transformer linears + attention (+ heads, small)
    conv layer l:  2 * C_in * C_out * k * T_l          (T_l frames out of layer l)
    pos conv:      2 * T * D * (D / groups) * K
    linears:       2 * T * (4 D^2 + 2 D F) per layer   (q, k, v, out; two FFN matrices)
    attention:     4 * T^2 * D per layer               (Q K^T and A V)
    training step = 3 x forward (backward is twice the forward), as usual for MFU.

BASE at 15.6 s crops: 4.9 (conv) + 0.5 (pos conv) + 8.5 (linears) + 1.4 (attention) = 15.4 GFLOP
per audio-second forward (15.3 unrounded), ~46 GFLOP per trained audio-second. The spectrogram front-end is counted
by its 2-D convs and projection. See bench/README.md.
"""

from __future__ import annotations

from w2vkit.model.config import ModelConfig


def _conv_encoder(cfg: ModelConfig, num_samples: int) -> float:
    fe = cfg.feature_extractor
    if fe.kind == "spectrogram":
        return _spectrogram_front_end(cfg, num_samples)
    flops, length, in_channels = 0.0, num_samples, 1
    for channels, kernel, stride in fe.conv_layers:
        length = (length - kernel) // stride + 1
        flops += 2.0 * in_channels * channels * kernel * length
        in_channels = channels
    return flops


def _spectrogram_front_end(cfg: ModelConfig, num_samples: int) -> float:
    fe = cfg.feature_extractor
    frames = frames_of(cfg, num_samples)
    half_frames = 2 * frames
    bins = fe.num_mels if fe.spectrogram == "logmel" else 257
    c = fe.spectrogram_channels
    flops, freqs, in_channels = 0.0, bins, 1
    for time_frames in (half_frames, half_frames, frames):
        freqs = (freqs - 1) // 2 + 1
        flops += 2.0 * in_channels * c * 9 * freqs * time_frames
        in_channels = c
    return flops + 2.0 * c * freqs * fe.conv_layers[-1][0] * frames


def frames_of(cfg: ModelConfig, num_samples: int) -> int:
    length = num_samples
    for _, kernel, stride in cfg.feature_extractor.conv_layers:
        length = (length - kernel) // stride + 1
    return max(length, 0)


def forward_flops(cfg: ModelConfig, num_samples: int) -> dict[str, float]:
    """FLOPs of one utterance of `num_samples` samples, by part."""
    t = cfg.transformer
    frames = frames_of(cfg, num_samples)
    d, f = t.model_dim, t.ffn_dim
    return {
        "conv_encoder": _conv_encoder(cfg, num_samples),
        "pos_conv": 2.0 * frames * d * (d / t.pos_conv_groups) * t.pos_conv_kernel,
        "linears": t.num_layers * 2.0 * frames * (4 * d * d + 2 * d * f),
        "attention": t.num_layers * 4.0 * frames * frames * d,
    }


def training_flops(cfg: ModelConfig, num_samples: int, batch_size: int) -> float:
    """FLOPs of one training update on `batch_size` rows of `num_samples` samples."""
    return 3.0 * batch_size * sum(forward_flops(cfg, num_samples).values())


__all__ = ["forward_flops", "frames_of", "training_flops"]


def logits_bytes(batch: int, frames: int, masked: int, negatives: int, final_dim: int) -> float:
    """Bytes the contrastive logits allocate, forward and backward, in fp32 (model/negatives.py):
    an upper bound of their peak. Per utterance of T frames, M masked, K negatives, F dims:

        3 T^2 x 4       per-utterance similarity table, its gradient (zeros + scatter)
        6 T F x 4       context and targets laid out by utterance, their gradients
        25 M F x 4      cosine normalisation, forward and backward
        55 M K          indices, identity checks, the (M, 1 + K) logits and their gradient

    Linear in the batch. BASE at 64 x 15.6 s (T = 779, M ~ 380, K = 100, F = 256): 1.5 GB; the
    (N, N) table it replaces took N^2 x 4 = 2.4 GB forward and as much backward (N = 64 M).
    """
    t, m, k, f = frames, masked, negatives, final_dim
    return batch * (4.0 * (3 * t * t + 6 * t * f + 25 * m * f) + 55.0 * m * k)
