"""Distractor sampling and contrastive logits (Sec. 3.2, Eq. 3).

Masked frames are kept flat: N = all masked frames of the batch in row-major (b, t) order, so rows
with different masked counts (padding, `require_same_masks=False`) need no special case.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _uniform_below(high: Tensor, num: int, generator: torch.Generator | None) -> Tensor:
    """Integers uniform in [0, high[i]) for each row i: (N,) -> (N, num)."""
    # float64: with float32, u * high rounds up to `high` for u close to 1 once high > ~2**10.
    u = torch.rand(high.shape[0], num, generator=generator, device=high.device, dtype=torch.float64)
    return (u * high[:, None]).floor().long().clamp_(max=(high[:, None] - 1).clamp(min=0))


def fewest_nonzero(counts: Tensor) -> Tensor:
    """Smallest count among rows with any masked frame (0-dim; the count's dtype max if none)."""
    return torch.where(counts > 0, counts, torch.iinfo(counts.dtype).max).min()


def sample_negatives(
    masked_per_row: Tensor,
    num_negatives: int,
    num_cross_sample: int = 0,
    *,
    generator: torch.Generator | None = None,
    num_masked: int | None = None,
    fewest_masked: int | None = None,
) -> Tensor:
    """Indices of distractors (paper: distractors) into the N flat masked targets.

    Within-utterance negatives come uniformly, with replacement, from the other masked frames of the
    same utterance (fairseq `sample_negatives`). Cross-sample negatives come from every other masked
    frame of the batch. fairseq excludes the *local* index there, so a frame could draw itself; we
    exclude the frame's own global index (docs/fairseq_differences.md#fd-cross-sample-global-index).

    `num_masked` is N = masked_per_row.sum() and `fewest_masked` its `fewest_nonzero`, when the caller has
    read them already (`masking.masked_positions`): no device sync here then.

    Shape: masked_per_row (B,) -> indices (N, num_negatives + num_cross_sample).
    """
    counts = masked_per_row.long()
    device = counts.device
    total = int(counts.sum()) if num_masked is None else num_masked
    rows = torch.arange(counts.shape[0], device=device)
    row = torch.repeat_interleave(rows, counts, output_size=total)  # (N,)
    # (N,) flat index of the row's first masked frame
    row_start = (torch.cumsum(counts, 0) - counts)[row]
    own = torch.arange(total, device=device)  # (N,) flat index of each positive
    columns = []
    if num_negatives > 0:
        row_count = counts[row]  # (N,)
        if fewest_masked is None and total > 0:
            fewest_masked = int(fewest_nonzero(counts))
        if total > 0 and fewest_masked is not None and fewest_masked < 2:
            bad = int(((counts > 0) & (counts < 2)).nonzero()[0, 0])
            raise ValueError(
                f"utterance {bad} in the batch has {int(counts[bad])} masked frame(s); "
                "within-utterance negatives need at least 2. With masking.require_same_masks every "
                "row keeps the shortest row's count: raise data.min_samples, crop less, or "
                "raise masking.time_prob"
            )
        pick = _uniform_below(row_count - 1, num_negatives, generator)  # (N, K) in [0, count-2]
        pick = pick + (pick >= (own - row_start)[:, None]).long()  # skip the positive itself
        columns.append(row_start[:, None] + pick)
    if num_cross_sample > 0:
        if total < 2:
            raise ValueError("cross-sample negatives need at least 2 masked frames in the batch")
        pick = _uniform_below(
            torch.full((total,), total - 1, device=device), num_cross_sample, generator
        )
        columns.append(pick + (pick >= own[:, None]).long())  # (N, Kc), never the positive
    return torch.cat(columns, dim=1)


def contrastive_logits(
    context: Tensor,
    targets: Tensor,
    negative_indices: Tensor,
    *,
    time_mask: Tensor | None = None,
    num_within: int = 0,
    target_ids: Tensor | None = None,
    extra_negatives: Tensor | None = None,
    extra_ids: Tensor | None = None,
    logit_temperature: float,
) -> Tensor:
    """Cosine similarity / kappa between each context vector and [positive, negatives...].

    A negative identical to its positive gets -inf (it is not a distractor). Identity is decided on
    `target_ids` (the chosen code ids, (N, G)) when given, else on exact vector equality: under
    straight-through Gumbel the same code can differ in the last bit, which makes exact equality
    of vectors an unreliable test.

    With `time_mask` (B, T), the first `num_within` columns of `negative_indices` must index the
    frame's own utterance (`sample_negatives` puts them first): they are read from per-utterance
    similarity tables (B, T, T), one batched GEMM; the other columns are gathered as (N, K, F)
    candidates, as fairseq does. Memory is linear in the batch either way (no (N, N) table):
    bench/README.md#negatives-memory.

    Shape: context (N, F), targets (N, F), negative_indices (N, K) [, extra_negatives (N, Kq, F)]
    -> logits (N, 1 + K [+ Kq]), positive in column 0, fp32.
    """
    # fp32: bf16 cosine collapses small angles (docs/fairseq_differences.md#fd-fp32-logits).
    c = F.normalize(context.float(), dim=-1, eps=1e-8)  # (N, F)
    t = F.normalize(targets.float(), dim=-1, eps=1e-8)  # (N, F)
    positive = (c * t).sum(-1, keepdim=True)  # (N, 1)
    within = num_within if time_mask is not None else 0
    parts = [positive]
    if within > 0:
        assert time_mask is not None
        parts.append(_within_utterance(c, t, negative_indices[:, :within], time_mask))
    if within < negative_indices.shape[1]:
        # (N, K', F) candidates: every other row's target, gathered
        parts.append(torch.einsum("nf,nkf->nk", c, t[negative_indices[:, within:]]))
    negative = torch.cat(parts[1:], dim=1)  # (N, K)
    if target_ids is not None:
        same = (target_ids[negative_indices] == target_ids[:, None]).all(-1)  # (N, K, G) -> (N, K)
    else:
        same = (targets[negative_indices] == targets[:, None]).all(-1)  # (N, K, F) -> (N, K)
    parts = [positive, negative.masked_fill(same, float("-inf"))]
    if extra_negatives is not None:
        e = F.normalize(extra_negatives.float(), dim=-1, eps=1e-8)  # (N, Kq, F)
        extra = torch.einsum("nf,nkf->nk", c, e)
        if extra_ids is not None and target_ids is not None:
            extra = extra.masked_fill((extra_ids == target_ids[:, None]).all(-1), float("-inf"))
        parts.append(extra)
    return torch.cat(parts, dim=1) / logit_temperature


def _within_utterance(c: Tensor, t: Tensor, indices: Tensor, time_mask: Tensor) -> Tensor:
    """Similarities of each frame to negatives of its own utterance, from per-utterance tables.

    Row b's masked frames are laid out by ordinal in (B, T, F) (zeros past its count), so one
    batched GEMM gives every within-utterance similarity; no host read of the counts (no sync).
    Shape: c, t (N, F), indices (N, K) flat, time_mask (B, T) -> (N, K).
    """
    batch, frames = time_mask.shape
    total, dim = c.shape
    counts = time_mask.sum(1)  # (B,)
    row = torch.repeat_interleave(
        torch.arange(batch, device=c.device), counts, output_size=total
    )  # (N,)
    row_start = (torch.cumsum(counts, 0) - counts)[row]  # (N,)
    ordinal = torch.arange(total, device=c.device) - row_start  # (N,) place within its row
    place = row * frames + ordinal  # (N,) flat place in the (B, T) layout
    c_rows = c.new_zeros(batch * frames, dim).index_copy(0, place, c).view(batch, frames, dim)
    t_rows = t.new_zeros(batch * frames, dim).index_copy(0, place, t).view(batch, frames, dim)
    table = torch.bmm(c_rows, t_rows.transpose(1, 2)).view(batch * frames, frames)  # (B*T, T)
    return table[place[:, None], indices - row_start[:, None]]  # (N, K)
