"""Span masking of the encoder input (Sec. 3.1): fairseq `compute_mask_indices`, in torch.

`compute_span_mask` follows fairseq HEAD (`fairseq/data/data_utils.py`, `num_mask_ver=2`,
`idc_select_ver=1`) row by row, but draws every random number from one `torch.Generator` on the
mask's device, so a seed fixes the mask (fairseq HEAD seeds each row from OS entropy). The default
path has no Python loop over rows or frames; `no_overlap=True` loops over span slots (see
`_place_without_overlap`). `SpanMasker` owns the learned mask embedding and applies both masks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from w2vkit.model.config import MaskingConfig, SpanSelection

SPAN_SELECTIONS = frozenset({"static", "uniform", "normal", "poisson"})
_NEVER = torch.iinfo(torch.long).max
"""Sort key above every `_distinct_keys` value: pushes a slot behind all real candidates."""


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
    lengths = _draw_lengths(
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
        starts, lengths = _place_without_overlap(lengths, num_spans, valid, min_space, generator)
    else:
        starts = _draw_distinct_starts(lengths, is_span, num_spans, valid, num_frames, generator)
    mask = _spans_to_mask(starts, lengths, valid, num_frames)  # (B, T)

    counts = mask.sum(1)
    if bool((counts >= valid).any()):
        row = int((counts >= valid).nonzero()[0, 0])
        raise ValueError(
            f"the entire sequence is masked: row {row} has {int(valid[row])} valid frames and "
            f"{num_spans[row].item()} spans of ~{span_length}; lower span_length or min_spans, or "
            "use longer rows (fairseq HEAD raises the same error)"
        )

    # 4. Equal counts: keep a uniformly random subset of min(counts) masked frames per row.
    if require_same_masks:
        mask = _keep_random(mask, counts.min().expand(batch_size), generator)
    # 5. Mask dropout: unmask round(count * p) random masked frames (np.rint: half to even).
    if mask_dropout_prob > 0:
        counts = mask.sum(1)
        num_holes = (counts.double() * mask_dropout_prob).round().long()  # (B,)
        mask = _keep_random(mask, counts - num_holes, generator)
    return mask


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


def _draw_lengths(
    selection: str,
    shape: tuple[int, int],
    span_length: int,
    span_other: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """Span lengths (B, N) long, one draw per slot (used or not, so shapes stay static)."""
    if selection == "static":
        return torch.full(shape, span_length, dtype=torch.long, device=device)
    if selection == "uniform":
        # fairseq HEAD calls `rng.randint`, which numpy Generators lack (AttributeError); this is
        # the intended `integers(span_other, 2 * span_length + 1)`, low truncated as numpy does.
        return torch.randint(
            int(span_other), 2 * span_length + 1, shape, generator=generator, device=device
        )
    if selection == "normal":
        draw = torch.normal(
            float(span_length),
            float(span_other),
            shape,
            generator=generator,
            dtype=torch.float64,
            device=device,
        )
        return draw.round().long().clamp(min=1)  # round half to even, as Python's round
    rate = torch.full(shape, float(span_length), dtype=torch.float64, device=device)
    return torch.poisson(rate, generator=generator).long()


def _draw_distinct_starts(
    lengths: Tensor,
    is_span: Tensor,
    num_spans: Tensor,
    valid: Tensor,
    num_frames: int,
    generator: torch.Generator | None,
) -> Tensor:
    """Distinct starts (B, N) uniform in [0, sz - min_len - 1] (fairseq `rng.choice`, no replace).

    Random keys over the candidates: the N smallest are a uniform random subset in a uniform random
    order, so slot j's start is paired with a random one of the drawn lengths.
    """
    batch_size, max_spans = lengths.shape
    big = torch.iinfo(torch.long).max
    min_len = torch.where(is_span, lengths, big).amin(1)  # (B,)
    min_len = torch.where(num_spans > 0, min_len, 0)
    # fairseq: `if sz - min_len <= num: min_len = sz - num - 1`, so there are num + 1 candidates.
    min_len = torch.where(valid - min_len <= num_spans, valid - num_spans - 1, min_len)
    num_candidates = valid - min_len  # (B,), at most max(T, N + 1)
    width = max(num_frames, max_spans + 1)
    keys = _distinct_keys((batch_size, width), generator, lengths.device)
    slots = torch.arange(width, device=lengths.device)
    keys.masked_fill_(slots >= num_candidates[:, None], _NEVER)
    # topk, not a full sort: N ~ T / span_length. Slots >= num_spans (ties at _NEVER) get length 0.
    return keys.topk(max_spans, dim=1, largest=False, sorted=True).indices  # (B, width) -> (B, N)


def _place_without_overlap(
    lengths: Tensor,
    num_spans: Tensor,
    valid: Tensor,
    min_space: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """fairseq's `no_overlap` interval splitting (with the fixed split condition of f862ff51).

    Spans are placed longest first. Each picks a free interval (s, e) with probability
    proportional to its length among those with `e - s >= length + max(min_space, 1)`, a start in
    [s, e - length), and splits the interval into the parts left and right of the span (at least
    min_space away). A row stops at the first span that fits nowhere (fairseq `break`).
    Each placement depends on the intervals the previous one left, so this loops over the N span
    slots (N ~ mask_prob * T / span_length); it stays vectorised over rows and frames. The interval
    list keeps fairseq's order (pop the chosen one, append the remainders) so the interval choice
    for a given draw is fairseq's inverse-CDF choice.

    Returns starts and lengths (B, N), sorted by decreasing length; unplaced slots have length 0.
    """
    batch_size, max_spans = lengths.shape
    device = lengths.device
    is_span = torch.arange(max_spans, device=device) < num_spans[:, None]
    lengths = torch.where(is_span, lengths, -1).sort(dim=1, descending=True, stable=True).values
    keep_length = torch.where(is_span, lengths, torch.iinfo(torch.long).max).amin(1)  # (B,)
    shape, f64 = (batch_size, max_spans), torch.float64
    u_part = torch.rand(shape, dtype=f64, generator=generator, device=device)  # interval per span
    u_start = torch.rand(shape, dtype=f64, generator=generator, device=device)  # start within it

    num_slots = max_spans + 1  # each placement pops one interval and adds at most two
    slots = torch.arange(num_slots, device=device)
    # Interval list (B, P, 2) of (start, end); slots past num_parts are (0, 0) and never fit.
    parts = torch.zeros(batch_size, num_slots, 2, dtype=torch.long, device=device)
    parts[:, 0, 1] = valid
    num_parts = torch.ones(batch_size, dtype=torch.long, device=device)
    stopped = torch.zeros(batch_size, dtype=torch.bool, device=device)
    starts, placed = [], []
    for j in range(max_spans):
        length = lengths[:, j]  # (B,)
        size = parts[..., 1] - parts[..., 0]  # (B, P)
        # fairseq admits e - s == length + min_space; with min_space == 0 that leaves
        # `randint(s, s)`, an empty range (crash): an interval must be longer than the span.
        weight = size * (size >= (length + max(min_space, 1))[:, None])
        total = weight.sum(1)
        wanted = (j < num_spans) & ~stopped
        active = wanted & (total > 0)
        stopped = wanted & ~active | stopped
        # Interval choice: first interval whose cumulative weight exceeds u * total.
        threshold = u_part[:, j] * total
        chosen = (weight.cumsum(1) <= threshold[:, None]).sum(1, keepdim=True)  # (B, 1)
        chosen = chosen.clamp(max=num_slots - 1)  # rows with nothing to place
        s, e = parts.gather(1, chosen[..., None].expand(-1, -1, 2)).unbind(-1)  # (B, 1) each
        length = length[:, None]
        # fairseq `randint(s, e - length)` (numpy `integers`): the span never ends flush with e,
        # which is what keeps spans in a left remainder min_space away from this one.
        span_start = s + (u_start[:, j, None] * (e - length - s)).long()  # floor: all >= 0
        starts.append(span_start)
        placed.append(length * active[:, None])
        # Pop the chosen interval (later slots shift left), then append the remainders.
        shifted = (slots + (slots >= chosen)).clamp(max=num_slots - 1)  # (B, P)
        popped = parts.gather(1, shifted[..., None].expand(-1, -1, 2))
        parts = torch.where(active[:, None, None], popped, parts)
        n = num_parts - active.long()
        has_left = active & (span_start - s - min_space >= keep_length[:, None]).squeeze(1)
        has_right = active & (e - span_start - length - min_space > keep_length[:, None]).squeeze(1)
        left = torch.stack([s, span_start - min_space + 1], -1)  # (B, 1, 2)
        right = torch.stack([span_start + length + min_space, e], -1)
        parts = torch.where((has_left[:, None] & (slots == n[:, None]))[..., None], left, parts)
        n = n + has_left.long()
        parts = torch.where((has_right[:, None] & (slots == n[:, None]))[..., None], right, parts)
        num_parts = n + has_right.long()
    return torch.cat(starts, 1), torch.cat(placed, 1)


def _spans_to_mask(starts: Tensor, lengths: Tensor, valid: Tensor, num_frames: int) -> Tensor:
    """Union of spans [start, start + length) clipped to < valid: (B, N) -> (B, T) bool."""
    ends = torch.minimum(starts + lengths, valid[:, None])
    live = ends > starts  # empty or fully clipped spans add nothing
    # Difference array: +1 at each start, -1 at each end; a frame is masked where the sum > 0.
    delta = torch.zeros(starts.shape[0], num_frames + 1, dtype=torch.long, device=starts.device)
    delta.scatter_add_(1, torch.where(live, starts, num_frames), live.long())
    delta.scatter_add_(1, torch.where(live, ends, num_frames), -live.long())
    return delta.cumsum(1)[:, :num_frames] > 0


def _distinct_keys(
    shape: tuple[int, int], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Random int64 sort keys, distinct within a row: uniform random bits above the column index.

    Ordering by them is a uniformly random permutation, up to ties in the random bits, which break
    by position (probability ~ width**2 / 2**(63 - shift) per row, ~1e-10 at 781 frames). Being
    distinct, they give exact subset sizes and the same order under any sort or selection.
    """
    width = shape[1]
    shift = max(width, 1).bit_length()
    bits = torch.randint(0, 2 ** (62 - shift), shape, generator=generator, device=device)
    return bits * (1 << shift) + torch.arange(width, device=device)


def _keep_random(mask: Tensor, keep: Tensor, generator: torch.Generator | None) -> Tensor:
    """Keep a uniformly random subset of `keep[b]` masked frames per row (fairseq
    `rng.choice(idx, k, replace=False)`): the masked frames with the smallest random keys."""
    rows, frames = mask.shape
    keys = _distinct_keys((rows, frames), generator, mask.device).masked_fill_(~mask, _NEVER)
    if bool(keep.min() == keep.max()):  # equal counts: O(T) selection instead of a sort
        k = int(keep[0])
        if k == 0:
            return torch.zeros_like(mask)
        threshold = keys.kthvalue(k, dim=1).values  # (B,)
    else:
        sorted_keys = keys.sort(dim=1).values
        threshold = sorted_keys.gather(1, (keep - 1).clamp(min=0)[:, None]).squeeze(1)
        threshold = torch.where(keep > 0, threshold, -1)
    return mask & (keys <= threshold[:, None])


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
    ) -> Tensor | None:
        """(B, T) bool time mask, None when `time_prob == 0`. Device defaults to the embedding's."""
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
