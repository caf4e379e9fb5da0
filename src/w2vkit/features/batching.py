"""Batched inference over audio windows: which windows may share a batch, and one pass per batch.

A layer-norm waveform extractor (LARGE) computes every frame from its own samples only, the
Transformer leaves padded frames out of attention, and padded frames are zeroed before the
positional convolution, so a zero-padded row gives the frames it gives alone (within float
rounding, about 3e-6). A group-norm extractor (BASE) normalises each channel over the whole row,
and the spectrogram front-end's 3x3 convolutions let the last valid frames see the padding: those
models batch only windows of identical length, which need no padding at all. Chunked extraction
cuts long files into windows of one size, so their windows batch together even then.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from w2vkit.model.config import FeatureExtractorConfig
from w2vkit.model.feature_extractor import output_lengths
from w2vkit.model.wav2vec2 import Wav2Vec2Model

COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Compute precision names (as `train.precision`): bf16/fp16 run the model under autocast."""


@dataclass(frozen=True)
class BatchLimits:
    max_items: int = 1
    """Windows per batch."""
    max_samples: int | None = None
    """Padded samples per batch (rows x longest row); None = no limit. A longer window runs alone."""

    def __post_init__(self) -> None:
        if self.max_items < 1:
            raise ValueError(f"batch size must be >= 1, got {self.max_items}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max batch samples must be >= 1 or None, got {self.max_samples}")


def padding_invariant(cfg: FeatureExtractorConfig) -> bool:
    """True when a zero-padded row gives the frames it gives alone (layer-norm conv extractor)."""
    return cfg.kind == "conv" and cfg.norm_mode == "layer_norm"


def group_windows(lengths: Sequence[int], limits: BatchLimits, *, pad: bool) -> list[list[int]]:
    """Window indices per batch, longest first; ties keep their input order.

    `pad=False`: only windows of equal length share a batch. Sorting by length makes both the
    equal-length runs and the rows of similar length (little padding) neighbours.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and _fits(batches[-1], lengths, lengths[i], limits, pad=pad):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _fits(
    batch: list[int], lengths: Sequence[int], length: int, limits: BatchLimits, *, pad: bool
) -> bool:
    longest = lengths[batch[0]]  # longest first: the first row sets the padded length
    if len(batch) >= limits.max_items or (not pad and length != longest):
        return False
    return limits.max_samples is None or (len(batch) + 1) * longest <= limits.max_samples


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def run_batch(
    model: Wav2Vec2Model,
    windows: Sequence[Tensor],
    layers: Sequence[int],
    compute_dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """Hidden states of `layers` for each window, from one (padded) forward pass.

    Rows of unequal length get a padding mask, which only a `padding_invariant` model allows.
    Shape: windows B x (S_b,) -> B x (L, T_b, D), on the model's device, in the dtype the model
    produced (float32, or the autocast dtype)
    """
    fe_cfg = model.cfg.feature_extractor
    device = next(model.parameters()).device
    lengths = torch.tensor([window.shape[0] for window in windows])  # (B,)
    wav = pad_sequence(list(windows), batch_first=True).to(device, torch.float32)  # (B, S)
    padding_mask = None
    if int(lengths.min()) < int(lengths.max()):
        if not padding_invariant(fe_cfg):
            raise ValueError(
                f"a {fe_cfg.kind}/{fe_cfg.norm_mode} feature extractor changes valid frames "
                "when a row is padded: batch only windows of equal length"
            )
        padding_mask = torch.arange(wav.shape[1])[None, :] >= lengths[:, None]  # (B, S)
        padding_mask = padding_mask.to(device)
    with autocast(device, compute_dtype):
        states = model.extract_features(wav, padding_mask, layer=max(layers)).hidden_states
    frames = output_lengths(lengths, fe_cfg.conv_layers).tolist()  # (B,) valid frames per row
    return [torch.stack([states[k][b, : frames[b]] for k in layers]) for b in range(len(frames))]


def run_windows(
    model: Wav2Vec2Model,
    windows: Sequence[Tensor],
    layers: Sequence[int],
    limits: BatchLimits,
    compute_dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """`run_batch` over `windows` grouped by `group_windows`; results in input order.

    Shape: windows N x (S_n,) -> N x (L, T_n, D)
    """
    pad = padding_invariant(model.cfg.feature_extractor)
    results: dict[int, Tensor] = {}
    for batch in group_windows([w.shape[0] for w in windows], limits, pad=pad):
        outputs = run_batch(model, [windows[i] for i in batch], layers, compute_dtype)
        results.update(zip(batch, outputs, strict=True))
    return [results[i] for i in range(len(windows))]
