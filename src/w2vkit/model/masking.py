"""Span masking of the encoder input (Sec. 3.1): fairseq `compute_mask_indices`, in torch.

`compute_span_mask` follows fairseq HEAD (`fairseq/data/data_utils.py`, `num_mask_ver=2`,
`idc_select_ver=1`) row by row, but draws every random number from one `torch.Generator` on the
mask's device, so a seed fixes the mask (fairseq HEAD seeds each row from OS entropy). The default
path has no Python loop over rows or frames; `no_overlap=True` loops over span slots (see
`span_placement.place_without_overlap`). `SpanMasker` owns the learned mask embedding and applies both masks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from w2vkit.model.config import MaskingConfig, SpanSelection
from w2vkit.model.host_rng import host_generator, to_device
from w2vkit.model.negatives import fewest_nonzero
from w2vkit.model.span_placement import (
    draw_distinct_starts,
    draw_lengths,
    keep_random,
    place_without_overlap,
    spans_to_mask,
)

SPAN_SELECTIONS = frozenset({"static", "uniform", "normal", "poisson"})


def compute_span_mask(
    shape: tuple[int, int],
    *,
    padding_mask: Tensor | None = None,
    mask_prob: float,
    span_length: int,
    selection: SpanSelection = "static",
    span_other: float = 0.0,
    min_spans: int = 0,
    no_overlap: bool = False,
    min_space: int = 0,
    require_same_masks: bool = True,
    mask_dropout_prob: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    check: bool = True,
) -> Tensor:
    """Random spans to mask, True = masked; padded frames are never masked.

    Per row with valid length sz: `num = max(min_spans, floor(mask_prob * sz / span_length + U))`
    spans, with distinct starts drawn uniformly from `[0, sz - min_len - 1]` (fairseq's off-by-one,
    kept for parity) and clipped to `< sz`. `require_same_masks` then keeps a uniformly random
    subset of each row's masked frames so all rows have the row minimum; `mask_dropout_prob`
    unmasks `round(count * p)` random masked frames per row.

    Args:
        padding_mask: (B, T) bool, True = padded; padding must be a suffix of each row.
        selection: span lengths: `static` = span_length; `uniform` = integers in
            [int(span_other), 2 * span_length]; `normal` = max(1, round(N(span_length,
            span_other))); `poisson` = round(Poisson(span_length)).
        no_overlap: fairseq's recursive interval splitting, spans >= min_space apart.
        generator: its device must be the mask's device.
        check: raise here when a row is masked whole (reads the device); False leaves that to
            `masked_positions`, which reads it with the counts in the step's one host read.

    Shape: -> (B, T) bool on `device` (default: padding_mask's, else the generator's, else CPU).
    """
    batch_size, num_frames = shape
    device = _resolve_device(device, padding_mask, generator)
    _check_args(
        num_frames,
        mask_prob,
        span_length,
        selection,
        span_other,
        min_spans,
        min_space,
        mask_dropout_prob,
    )
    if batch_size == 0:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    valid = _valid_lengths(shape, padding_mask, device)  # (B,)

    # 1. Number of spans per row, with probabilistic rounding (one U[0, 1) per row).
    u = torch.rand(batch_size, dtype=torch.float64, generator=generator, device=device)
    num_spans = (mask_prob * valid.double() / span_length + u).floor().long().clamp(min=min_spans)
    # A bound known without a device sync, so every draw below has a static shape.
    max_spans = max(min_spans, int(mask_prob * num_frames / span_length) + 1)
    is_span = torch.arange(max_spans, device=device) < num_spans[:, None]  # (B, N)

    # 2. Span lengths (B, N); slots >= num_spans have length 0.
    lengths = draw_lengths(
        selection, (batch_size, max_spans), span_length, span_other, generator, device
    )
    lengths = torch.where(is_span, lengths, 0)
    # A row may draw 0 spans when min_spans is 0 (channel masks: prob * D / span < 1). fairseq HEAD
    # raises "this should never happens" there, which kills a run at a random step; such a row
    # masks nothing (and, with require_same_masks, so does the batch).
    # fairseq HEAD replaces an all-zero draw by ONE span of min(span_length, sz - 1) but keeps the
    # span count, which crashes (IndexError) when count > 1; like fairseq before d871f616 we set
    # the first span's length and keep the others at 0 (identical when count == 1).
    if selection != "static":
        all_zero = (num_spans > 0) & (lengths.sum(1) == 0)
        fallback = torch.clamp(valid - 1, max=span_length)  # (B,)
        lengths[:, 0] = torch.where(all_zero, fallback, lengths[:, 0])

    # 3. Span starts.
    if no_overlap:
        starts, lengths = place_without_overlap(lengths, num_spans, valid, min_space, generator)
    else:
        starts = draw_distinct_starts(lengths, is_span, num_spans, valid, num_frames, generator)
    mask = spans_to_mask(starts, lengths, valid, num_frames)  # (B, T)

    counts = mask.sum(1)
    if check and bool((counts >= valid).any()):
        raise _whole_row_error(
            counts, valid, lambda row: f" and {num_spans[row].item()} spans of ~{span_length}"
        )

    # 4. Equal counts: keep a uniformly random subset of min(counts) masked frames per row.
    if require_same_masks:
        mask = keep_random(mask, counts.min().expand(batch_size), generator)
    # 5. Mask dropout: unmask round(count * p) random masked frames (np.rint: half to even).
    if mask_dropout_prob > 0:
        counts = mask.sum(1)
        num_holes = (counts.double() * mask_dropout_prob).round().long()  # (B,)
        mask = keep_random(mask, counts - num_holes, generator)
    return mask


def masked_positions(
    time_mask: Tensor, frame_padding_mask: Tensor | None = None
) -> tuple[Tensor, int, int]:
    """Flat positions (b * T + t) of the masked frames in row-major order, their number N and the
    fewest masked frames of a row that has any: a host read, which sizes every later tensor (keep
    the mask on the host: `SpanMasker.draw`). Raises if a row is masked whole (`compute_span_mask(check=False)`
    leaves that check here; a row masked whole before `require_same_masks` evens the counts passes).

    Shape: time_mask (B, T), frame_padding_mask (B, T) -> positions (N,), for `index_select` on a
    (B * T, ...) view.
    """
    counts = time_mask.sum(1)  # (B,)
    valid = time_mask.shape[1] - (0 if frame_padding_mask is None else frame_padding_mask.sum(1))
    stats = torch.stack([counts.sum(), fewest_nonzero(counts), (counts >= valid).any().long()])
    total, fewest, any_whole = stats.tolist()
    if any_whole:
        raise _whole_row_error(counts, torch.as_tensor(valid).expand_as(counts), lambda row: "")
    # A stable sort puts the masked frames first, in order: the boolean index without its sync.
    flat = (~time_mask).flatten().to(torch.uint8)  # (B * T,), 0 = masked
    return flat.argsort(stable=True)[:total], total, fewest


def _whole_row_error(counts: Tensor, valid: Tensor, spans: Callable[[int], str]) -> ValueError:
    row = int((counts >= valid).nonzero()[0, 0])
    return ValueError(
        f"the entire sequence is masked: row {row} has {int(valid[row])} valid frames{spans(row)}; "
        "lower span_length or min_spans, or use longer rows (fairseq HEAD raises the same error)"
    )


def _resolve_device(
    device: torch.device | str | None,
    padding_mask: Tensor | None,
    generator: torch.Generator | None,
) -> torch.device:
    if device is None:
        if padding_mask is not None:
            device = padding_mask.device
        elif generator is not None:
            device = generator.device
        else:
            device = "cpu"
    device = torch.device(device)
    if generator is not None and torch.device(generator.device).type != device.type:
        raise ValueError(
            f"generator is on {generator.device} but the mask is made on {device}; "
            "create the generator with torch.Generator(device=...)"
        )
    return device


def _check_args(
    num_frames: int,
    mask_prob: float,
    span_length: int,
    selection: str,
    span_other: float,
    min_spans: int,
    min_space: int,
    mask_dropout_prob: float,
) -> None:
    if num_frames < 0:
        raise ValueError(f"shape has a negative length {num_frames}")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if not 0.0 <= mask_dropout_prob <= 1.0:
        raise ValueError(f"mask_dropout_prob must be in [0, 1], got {mask_dropout_prob}")
    if span_length < 1:
        raise ValueError(f"span_length must be >= 1, got {span_length}")
    if min_spans < 0 or min_space < 0:
        raise ValueError(f"min_spans and min_space must be >= 0, got {min_spans}, {min_space}")
    if selection not in SPAN_SELECTIONS:
        raise ValueError(
            f"unknown span selection {selection!r}; choose one of "
            f"{', '.join(sorted(SPAN_SELECTIONS))}"
        )
    if span_other < 0:
        raise ValueError(f"span_other must be >= 0, got {span_other}")
    if selection == "uniform" and int(span_other) > 2 * span_length:
        raise ValueError(
            f"uniform span lengths need span_other <= 2 * span_length, got {span_other}"
        )


def _valid_lengths(
    shape: tuple[int, int], padding_mask: Tensor | None, device: torch.device
) -> Tensor:
    batch_size, num_frames = shape
    if num_frames == 0:
        raise ValueError("cannot mask a sequence of 0 frames")
    if padding_mask is None:
        return torch.full((batch_size,), num_frames, dtype=torch.long, device=device)
    if tuple(padding_mask.shape) != tuple(shape) or padding_mask.dtype != torch.bool:
        raise ValueError(
            f"padding_mask must be a bool tensor of shape {tuple(shape)}, got "
            f"{padding_mask.dtype} {tuple(padding_mask.shape)}"
        )
    padding_mask = padding_mask.to(device)
    valid = num_frames - padding_mask.sum(1)
    # fairseq masks frames < sz, which is only right when the padding is a suffix.
    suffix = torch.arange(num_frames, device=device) >= valid[:, None]
    if not torch.equal(padding_mask, suffix):
        raise ValueError("padding_mask must be True only at the end of each row (right padding)")
    if bool((valid == 0).any()):
        row = int((valid == 0).nonzero()[0, 0])
        raise ValueError(f"row {row} of padding_mask has no valid frames to mask")
    return valid


@dataclass
class MaskDraw:
    """One step's masks, drawn on the host (model/host_rng.py) and copied to the model's device:
    the masked counts size every later tensor, and reading them costs no device sync."""

    time_mask: Tensor | None
    """(B, T) bool on the device, True = masked; None when `time_prob` is 0."""
    channel_mask: Tensor | None
    """(B, D) bool on the device."""
    positions: Tensor | None
    """(N,) flat positions b * T + t of the masked frames in row-major order, on the device."""
    masked_per_row: Tensor | None
    """(B,) on the host."""
    num_masked: int
    fewest_masked: int
    """The fewest masked frames of a row that has any."""
    generator: torch.Generator | None
    """Where later host-side draws (negatives) come from."""


class SpanMasker(nn.Module):
    """Time and channel span masking of the projected encoder input, with the learned embedding.

    fairseq `Wav2Vec2Model.apply_mask`: masked frames are replaced whole by `mask_embedding`
    (fairseq `mask_emb`, HF `masked_spec_embed`); masked channels are zeroed over all frames.
    """

    def __init__(self, cfg: MaskingConfig, model_dim: int):
        super().__init__()
        self.cfg = cfg
        self.mask_embedding = nn.Parameter(torch.empty(model_dim).uniform_())  # U[0, 1) as fairseq

    def time_mask(
        self,
        batch_size: int,
        num_frames: int,
        padding_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        *,
        check: bool = True,
    ) -> Tensor | None:
        """(B, T) bool time mask, None when `time_prob == 0`. Device defaults to the embedding's.

        `check=False`: the caller checks for rows masked whole (`masked_positions`)."""
        cfg = self.cfg
        if cfg.time_prob == 0:
            return None
        return compute_span_mask(
            (batch_size, num_frames),
            padding_mask=padding_mask,
            mask_prob=cfg.time_prob,
            span_length=cfg.time_span_frames,
            selection=cfg.time_span_selection,
            span_other=cfg.time_span_other,
            min_spans=cfg.time_min_spans,
            no_overlap=cfg.time_no_overlap,
            min_space=cfg.time_min_space_frames,
            require_same_masks=cfg.require_same_masks,
            mask_dropout_prob=cfg.mask_dropout_prob,
            generator=generator,
            device=self.mask_embedding.device if device is None else device,
            check=check,
        )

    def channel_mask(
        self,
        batch_size: int,
        num_channels: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor | None:
        """(B, D) bool channel mask, None when `channel_prob == 0`.

        As fairseq: no padding, min_spans=0, no mask dropout, and counts equalised across the
        batch (fairseq does not pass `require_same_masks` here, so its default True applies).
        """
        cfg = self.cfg
        if cfg.channel_prob == 0:
            return None
        return compute_span_mask(
            (batch_size, num_channels),
            mask_prob=cfg.channel_prob,
            span_length=cfg.channel_span_channels,
            selection=cfg.channel_span_selection,
            span_other=cfg.channel_span_other,
            min_spans=0,
            no_overlap=cfg.channel_no_overlap,
            min_space=cfg.channel_min_space_channels,
            require_same_masks=True,
            generator=generator,
            device=self.mask_embedding.device if device is None else device,
        )

    def draw(
        self,
        shape: tuple[int, int, int],
        frame_padding_mask: Tensor | None,
        generator: torch.Generator | None,
        device: torch.device,
        time_mask: Tensor | None = None,
    ) -> MaskDraw:
        """Time and channel masks for a (B, T, D) encoder input; `time_mask` replaces the drawn one.

        A padded batch copies its padding to the host (one sync); crops of equal length have none.
        """
        batch, frames, dim = shape
        host = host_generator(generator)
        pad = None if frame_padding_mask is None else frame_padding_mask.cpu()
        if time_mask is None:
            time_mask = self.time_mask(batch, frames, pad, host, "cpu", check=False)
        channel_mask = self.channel_mask(batch, dim, host, "cpu")
        channels = None if channel_mask is None else to_device(channel_mask, device)
        if time_mask is None:
            return MaskDraw(None, channels, None, None, 0, 0, host)
        time_mask = time_mask.cpu()
        positions, num_masked, fewest_masked = masked_positions(time_mask, pad)
        return MaskDraw(
            time_mask=to_device(time_mask, device),
            channel_mask=channels,
            positions=to_device(positions, device),
            masked_per_row=time_mask.sum(1),
            num_masked=num_masked,
            fewest_masked=fewest_masked,
            generator=host,
        )

    def forward(
        self, x: Tensor, time_mask: Tensor | None = None, channel_mask: Tensor | None = None
    ) -> Tensor:
        """Shape: x (B, T, D), time_mask (B, T), channel_mask (B, D) -> (B, T, D), out of place."""
        batch_size, num_frames, model_dim = x.shape
        for name, mask, want in (
            ("time_mask", time_mask, (batch_size, num_frames)),
            ("channel_mask", channel_mask, (batch_size, model_dim)),
        ):
            if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != want):
                raise ValueError(
                    f"{name} must be a bool tensor of shape {want}, got "
                    f"{mask.dtype} {tuple(mask.shape)}"
                )
        # channel_before: masked frames keep their whole embedding; after (fairseq default):
        # the masked channels are zeroed in the embedding frames too.
        if channel_mask is not None and self.cfg.channel_before:
            x = torch.where(channel_mask[:, None, :], 0.0, x)  # (B, 1, D) over all frames
        if time_mask is not None:
            x = torch.where(time_mask[..., None], self.mask_embedding.to(x.dtype), x)  # (B, T, 1)
        if channel_mask is not None and not self.cfg.channel_before:
            x = torch.where(channel_mask[:, None, :], 0.0, x)
        return x
