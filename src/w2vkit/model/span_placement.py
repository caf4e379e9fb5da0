"""The draws of a span mask (`masking.compute_span_mask`): span lengths, distinct random starts,
fairseq's `no_overlap` interval splitting, spans turned into a (B, T) mask, random subsets. Every
draw comes from one `torch.Generator` and has a shape known on the host: no device sync.
"""

from __future__ import annotations

import torch
from torch import Tensor

NEVER = torch.iinfo(torch.long).max
"""Sort key above every `distinct_keys` value: pushes a slot behind all real candidates."""


def draw_distinct_starts(
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
    keys = distinct_keys((batch_size, width), generator, lengths.device)
    slots = torch.arange(width, device=lengths.device)
    keys.masked_fill_(slots >= num_candidates[:, None], NEVER)
    # topk, not a full sort: N ~ T / span_length. Slots >= num_spans (ties at NEVER) get length 0.
    return keys.topk(max_spans, dim=1, largest=False, sorted=True).indices  # (B, width) -> (B, N)


def place_without_overlap(
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


def spans_to_mask(starts: Tensor, lengths: Tensor, valid: Tensor, num_frames: int) -> Tensor:
    """Union of spans [start, start + length) clipped to < valid: (B, N) -> (B, T) bool."""
    ends = torch.minimum(starts + lengths, valid[:, None])
    live = ends > starts  # empty or fully clipped spans add nothing
    # Difference array: +1 at each start, -1 at each end; a frame is masked where the sum > 0.
    delta = torch.zeros(starts.shape[0], num_frames + 1, dtype=torch.long, device=starts.device)
    delta.scatter_add_(1, torch.where(live, starts, num_frames), live.long())
    delta.scatter_add_(1, torch.where(live, ends, num_frames), -live.long())
    return delta.cumsum(1)[:, :num_frames] > 0


def distinct_keys(
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


def draw_lengths(
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


def keep_random(mask: Tensor, keep: Tensor, generator: torch.Generator | None) -> Tensor:
    """Keep a uniformly random subset of `keep[b]` masked frames per row (fairseq
    `rng.choice(idx, k, replace=False)`): the masked frames with the smallest random keys."""
    rows, frames = mask.shape
    keys = distinct_keys((rows, frames), generator, mask.device).masked_fill_(~mask, NEVER)
    # A sort, not kthvalue: k would be read on the host (a device sync). The keys are distinct, so
    # the threshold is the same value either way.
    sorted_keys = keys.sort(dim=1).values
    threshold = sorted_keys.gather(1, (keep - 1).clamp(min=0)[:, None]).squeeze(1)
    threshold = torch.where(keep > 0, threshold, -1)
    return mask & (keys <= threshold[:, None])
