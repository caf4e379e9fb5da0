"""Per-utterance normalisation over time of the valid (unpadded) frames."""

from __future__ import annotations

import torch
from torch import Tensor


def instance_norm_over_time(x: Tensor, padding_mask: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Each (utterance, channel) to zero mean and unit variance over its valid frames, in fp32.

    `F.instance_norm` on (B, D, T) (biased variance, no affine) when nothing is padded; padded
    frames neither count in the statistics nor keep meaningful values.
    Shape: x (B, T, D), padding_mask (B, T) True = padded -> (B, T, D) fp32.
    """
    x = x.float()
    if padding_mask is None:
        mean = x.mean(1, keepdim=True)  # (B, 1, D)
        var = x.var(1, unbiased=False, keepdim=True)
    else:
        valid = (~padding_mask).unsqueeze(-1).float()  # (B, T, 1)
        count = valid.sum(1, keepdim=True).clamp(min=1.0)
        mean = (x * valid).sum(1, keepdim=True) / count
        var = ((x - mean).pow(2) * valid).sum(1, keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + eps)


__all__ = ["instance_norm_over_time"]
