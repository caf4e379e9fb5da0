"""Embedding layers for audio models: lookup tables, Demucs' scaled/frequency embeddings, tokens.

An embedding lookup is a one-hot matrix product: `table[ids] == one_hot(ids) @ table`. The modules
here are thin, tested wrappers around `nn.Embedding` that add what audio models need:
- `ScaledEmbedding` (Demucs): stores `weight / scale` so the effective weight learns faster.
- `FrequencyEmbedding` (Hybrid Demucs, Isik et al. 2020, arXiv 2008.04470): a learned embedding of
  the frequency bin added to a spectrogram, so convolutions over frequency stop being equivariant.
- `TokenEmbedding`: discrete per-frame sequences (pitch levels, phoneme ids) with masked mean pooling.
- `pitch_to_tokens`: f0 in Hz -> log-spaced pitch levels, unvoiced as its own token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FrequencyEmbedding",
    "ScaledEmbedding",
    "TokenEmbedding",
    "check_token_ids",
    "one_hot_embedding",
    "pitch_level_hz",
    "pitch_to_tokens",
]


def one_hot_embedding(ids: Tensor, weight: Tensor) -> Tensor:
    """Embedding lookup written as a matrix product: `one_hot(ids) @ weight`.

    `ids` is either integer token ids (...,) or a floating distribution over the V tokens (..., V),
    e.g. softmax outputs; the latter gives the probability-weighted mix `probs @ weight`.

    Shape: ids (...,) long | (..., V) float, weight (V, D) -> (..., D)
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be (V, D), got shape {tuple(weight.shape)}")
    num_tokens = weight.shape[0]
    if ids.is_floating_point():
        if ids.shape[-1] != num_tokens:
            raise ValueError(
                f"soft ids must end with V={num_tokens} token probabilities, got {tuple(ids.shape)}"
            )
        return ids.to(weight.dtype) @ weight  # (..., V) @ (V, D) -> (..., D)
    check_token_ids(ids, num_tokens)
    one_hot = F.one_hot(ids, num_classes=num_tokens).to(weight.dtype)  # (...,) -> (..., V)
    return one_hot @ weight  # (..., V) @ (V, D) -> (..., D)


def check_token_ids(ids: Tensor, num_tokens: int) -> None:
    """Raise unless `ids` is an integer tensor of ids in [0, num_tokens).

    The error names the first id out of range, where it is, and the table size: a table of V
    rows takes ids 0..V-1, so an id k needs at least k + 1 rows.
    """
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"token ids must be an integer tensor, got dtype {ids.dtype}")
    bad = ((ids < 0) | (ids >= num_tokens)).nonzero()
    if len(bad):
        position = tuple(int(i) for i in bad[0])
        token_id = int(ids[position])
        raise ValueError(
            f"token id {token_id} at index {position} is outside the table of {num_tokens} "
            f"tokens: ids must lie in [0, {num_tokens})"
            + (f"; id {token_id} needs at least {token_id + 1} rows" if token_id >= 0 else "")
        )


def _normal_table(num_embeddings: int, dim: int, generator: torch.Generator | None) -> Tensor:
    """N(0, 1) init, as `nn.Embedding`, but drawn from `generator` so a seed fixes it."""
    if num_embeddings < 1 or dim < 1:
        raise ValueError(f"need num_embeddings >= 1 and dim >= 1, got {num_embeddings}, {dim}")
    return torch.randn(num_embeddings, dim, generator=generator)  # (V, D)


class ScaledEmbedding(nn.Module):
    """Embedding whose parameter is stored divided by `scale` (Demucs `ScaledEmbedding`).

    The effective weight is `scale * stored`. The gradient on the stored parameter is therefore
    `scale` times the plain embedding's, and one SGD step moves the effective weight `scale**2`
    times as far (for Adam, which normalises gradients, `scale` times): a per-layer learning-rate
    boost without a separate optimizer group.

    `smooth=True` replaces the N(0, 1) init by its running sum over rows divided by sqrt(n), so
    row n still has unit variance (a sum of n unit Gaussians has variance n) but neighbouring rows
    start out close: neighbouring frequencies begin with similar embeddings.

    The state_dict key is `embedding.weight` (stored, i.e. divided by `scale`), as in Demucs.
    Shape: ids (...,) long -> (..., D)
    """

    def __init__(
        self,
        num_embeddings: int,
        dim: int,
        *,
        scale: float = 10.0,
        smooth: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        weight = _normal_table(num_embeddings, dim, generator)  # (V, D)
        if smooth:
            rows = torch.arange(1, num_embeddings + 1, dtype=weight.dtype)  # (V,)
            weight = weight.cumsum(dim=0) / rows.sqrt()[:, None]  # (V, D)
        # `_weight` skips nn.Embedding's own init, which would draw from the global RNG.
        self.embedding = nn.Embedding(num_embeddings, dim, _weight=weight / scale)
        self.scale = scale

    @property
    def weight(self) -> Tensor:
        """Effective weight (V, D) = stored parameter * scale (differentiable)."""
        return self.embedding.weight * self.scale

    def forward(self, ids: Tensor) -> Tensor:
        return self.embedding(ids) * self.scale  # (...,) -> (..., D)


class FrequencyEmbedding(nn.Module):
    """Adds a learned embedding of the frequency bin to a spectrogram (Hybrid Demucs).

    `out[b, c, f, t] = x[b, c, f, t] + weight * E[f, c]`, with `E` a `ScaledEmbedding` over
    `num_freqs` bins (smooth-initialised by default, so close frequencies start out similar).
    Inputs with fewer bins (F < num_freqs) use rows 0..F-1.

    Args:
        weight: how strongly the embedding is mixed in (Demucs `freq_emb` = 0.2).
    Shape: x (B, C, F, T) -> (B, C, F, T)
    """

    def __init__(
        self,
        num_freqs: int,
        channels: int,
        *,
        scale: float = 10.0,
        smooth: bool = True,
        weight: float = 0.2,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.table = ScaledEmbedding(
            num_freqs, channels, scale=scale, smooth=smooth, generator=generator
        )
        self.num_freqs = num_freqs
        self.channels = channels
        # Not `self.weight`: on a module that name reads as a parameter tensor.
        self.mix_weight = weight

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels or x.shape[2] > self.num_freqs:
            raise ValueError(
                f"expected x (B, C={self.channels}, F<={self.num_freqs}, T), got {tuple(x.shape)}"
            )
        freqs = torch.arange(x.shape[2], device=x.device)  # (F,)
        emb = self.table(freqs).t()  # (F, C) -> (C, F)
        return x + self.mix_weight * emb[None, :, :, None].to(x.dtype)  # (1, C, F, 1) broadcasts


class TokenEmbedding(nn.Module):
    """Embedding of discrete per-frame tokens (pitch levels, phoneme ids) with mean pooling.

    Args:
        padding_id: token of padded positions; its row is zero and never trained. It also
            gives `pool` its padding mask when none is passed.
        max_norm: if set, every row looked up is renormalised in place to L2 norm <= max_norm
            (`nn.Embedding` semantics: only rows used in the batch change, under no_grad). Because
            the update is in place, clone `.weight` before any differentiable use of it that
            precedes the forward (e.g. weight tying), or autograd raises.
    Shape: ids (B, T) long -> (B, T, D); pool -> (B, D)
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        *,
        padding_id: int | None = None,
        max_norm: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if padding_id is not None and not 0 <= padding_id < num_tokens:
            raise ValueError(f"padding_id must lie in [0, {num_tokens}), got {padding_id}")
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        weight = _normal_table(num_tokens, dim, generator)  # (V, D)
        if padding_id is not None:
            weight[padding_id] = 0.0  # nn.Embedding only zeroes it in its own init, skipped here
        self.embedding = nn.Embedding(
            num_tokens, dim, padding_idx=padding_id, max_norm=max_norm, _weight=weight
        )
        self.padding_id = padding_id

    @property
    def weight(self) -> Tensor:
        return self.embedding.weight  # (V, D)

    def forward(self, ids: Tensor) -> Tensor:
        check_token_ids(ids, self.embedding.num_embeddings)
        return self.embedding(ids)  # (B, T) -> (B, T, D)

    def pool(self, ids: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Mean of the token embeddings over non-padded positions (True = padded).

        Without `padding_mask`, positions equal to `padding_id` are padding (none if it is None).
        A row with no valid position pools to zeros.
        Shape: ids (B, T), padding_mask (B, T) bool -> (B, D)
        """
        if padding_mask is None and self.padding_id is not None:
            padding_mask = ids == self.padding_id
        elif padding_mask is None:
            padding_mask = torch.zeros_like(ids, dtype=torch.bool)
        if padding_mask.shape != ids.shape or padding_mask.dtype != torch.bool:
            raise ValueError(
                f"padding_mask must be bool with the shape of ids {tuple(ids.shape)}, "
                f"got {padding_mask.dtype} {tuple(padding_mask.shape)}"
            )
        emb = self(ids)  # (B, T, D)
        valid = (~padding_mask).to(emb.dtype)[..., None]  # (B, T, 1)
        count = valid.sum(dim=1).clamp(min=1.0)  # (B, 1); clamp: all-padded rows give 0, not NaN
        return (emb * valid).sum(dim=1) / count  # (B, T, D) -> (B, D)


def pitch_to_tokens(
    f0_hz: Tensor, num_levels: int = 128, fmin_hz: float = 50.0, fmax_hz: float = 1100.0
) -> Tensor:
    """Quantise f0 to `num_levels` log-spaced levels; unvoiced frames get token `num_levels`.

    Level k is centred on `fmin_hz * (fmax_hz / fmin_hz) ** (k / (num_levels - 1))`; f0 is
    rounded to the nearest centre on a log scale (halves to even) and clamped to [0, num_levels).
    Frames with f0 <= 0 or NaN (pitch trackers' unvoiced marks) are unvoiced. The vocabulary is
    therefore `num_levels + 1`; add one more token for padding if batches are padded.
    The default range 50-1100 Hz covers speech and singing (so-vits-svc's f0 range).

    Shape: f0_hz (B, T) float -> (B, T) long
    """
    if not f0_hz.is_floating_point():
        raise ValueError(f"f0_hz must be a float tensor in Hz, got dtype {f0_hz.dtype}")
    _check_pitch_range(num_levels, fmin_hz, fmax_hz)
    f0 = f0_hz.double()  # float64: level boundaries must not move with the input dtype
    voiced = f0 > 0  # False for NaN as well
    f0 = torch.where(voiced, f0, fmin_hz).clamp(min=fmin_hz)  # unvoiced values are replaced below
    position = torch.log(f0 / fmin_hz) / math.log(fmax_hz / fmin_hz)
    levels = torch.round(position * (num_levels - 1)).clamp(max=num_levels - 1).long()
    return torch.where(voiced, levels, torch.full_like(levels, num_levels))  # (B, T)


def pitch_level_hz(
    tokens: Tensor, num_levels: int = 128, fmin_hz: float = 50.0, fmax_hz: float = 1100.0
) -> Tensor:
    """The inverse of `pitch_to_tokens`: each level's centre in Hz, NaN for the unvoiced token.

    Shape: tokens (...,) long -> (...,) float64
    """
    _check_pitch_range(num_levels, fmin_hz, fmax_hz)
    check_token_ids(tokens, num_levels + 1)
    centres = fmin_hz * (fmax_hz / fmin_hz) ** (tokens.double() / (num_levels - 1))
    return torch.where(tokens < num_levels, centres, math.nan)


def _check_pitch_range(num_levels: int, fmin_hz: float, fmax_hz: float) -> None:
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    if not 0 < fmin_hz < fmax_hz:
        raise ValueError(f"need 0 < fmin_hz < fmax_hz, got fmin_hz={fmin_hz} fmax_hz={fmax_hz}")
