"""Distractor sampling (fairseq `sample_negatives`, with the fix in
docs/fairseq_differences.md#fd-cross-sample-global-index) and contrastive logits (against fairseq
compute_preds)."""

from __future__ import annotations

import math

import pytest
import torch

from w2vkit.model.negatives import contrastive_logits, sample_negatives


def _owner(counts: list[int]) -> torch.Tensor:
    """Utterance of each flat masked index: (N,)."""
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


def _chi_square(draws: torch.Tensor, allowed: torch.Tensor) -> tuple[float, int]:
    """Pearson statistic of `draws` (D,) against uniform over the True entries of `allowed` (N,)."""
    counts = torch.bincount(draws, minlength=allowed.shape[0]).double()
    assert counts[~allowed].sum() == 0
    expected = draws.numel() / int(allowed.sum())
    return float(((counts[allowed] - expected) ** 2 / expected).sum()), int(allowed.sum()) - 1


def _assert_uniform(statistics: list[tuple[float, int]]) -> None:
    # A sum of independent chi-square statistics: mean df, std sqrt(2 df); 6 sigma never flakes.
    total = sum(s for s, _ in statistics)
    df = sum(d for _, d in statistics)
    assert abs(total - df) < 6 * math.sqrt(2 * df), (total, df)


def test_shape_and_dtype():
    idx = sample_negatives(
        torch.tensor([5, 7, 3]), 4, 2, generator=torch.Generator().manual_seed(0)
    )
    assert idx.shape == (15, 6) and idx.dtype == torch.long


def test_within_utterance_same_row_never_positive_and_uniform():
    counts = [6, 9, 4]
    num = 3000
    idx = sample_negatives(torch.tensor(counts), num, generator=torch.Generator().manual_seed(0))
    owner = _owner(counts)
    total = sum(counts)
    stats = []
    for i in range(total):
        assert (owner[idx[i]] == owner[i]).all(), f"(a) row {i} drew from another utterance"
        assert (idx[i] != i).all(), f"(b) row {i} drew itself"
        stats.append(_chi_square(idx[i], (owner == owner[i]) & (torch.arange(total) != i)))
    _assert_uniform(stats)


def test_every_other_frame_appears_when_there_are_fewer_than_k():
    idx = sample_negatives(torch.tensor([4, 3]), 100, generator=torch.Generator().manual_seed(0))
    assert sorted(set(idx[0].tolist())) == [1, 2, 3]
    assert sorted(set(idx[5].tolist())) == [4, 6]


def test_cross_sample_excludes_the_global_own_index_and_covers_the_batch_uniformly():
    counts = [5, 7, 4]
    total = sum(counts)
    idx = sample_negatives(
        torch.tensor(counts), 2, 2000, generator=torch.Generator().manual_seed(1)
    )
    cross = idx[:, 2:]
    within = idx[:, :2]
    owner = _owner(counts)
    assert (owner[within] == owner[:, None]).all()
    stats = []
    for i in range(total):
        assert (cross[i] != i).all(), f"row {i} drew itself as a cross-sample negative"
        stats.append(_chi_square(cross[i], torch.arange(total) != i))
    _assert_uniform(stats)
    # fairseq skips the *local* index t instead (fd-cross-sample-global-index); here it is a candidate: global
    # row 7 is local frame 2 of utterance 1, and flat index 2 (utterance 0) must still be drawn.
    assert (cross[7] == 2).any()


def test_error_when_a_row_has_fewer_than_two_masked_frames():
    with pytest.raises(ValueError, match=r"utterance 1 in the batch has 1 masked frame"):
        sample_negatives(torch.tensor([4, 1, 5]), 3)
    # A row with no masked frame scores nothing and needs no distractor (HF also accepts it).
    idx = sample_negatives(torch.tensor([0, 5]), 3, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (5, 3) and ((idx >= 0) & (idx < 5)).all()
    with pytest.raises(ValueError, match="cross-sample negatives need at least 2"):
        sample_negatives(torch.tensor([1]), 0, 3)


def test_same_generator_same_indices():
    counts = torch.tensor([8, 8])
    a = sample_negatives(counts, 10, 3, generator=torch.Generator().manual_seed(3))
    b = sample_negatives(counts, 10, 3, generator=torch.Generator().manual_seed(3))
    c = sample_negatives(counts, 10, 3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def fairseq_compute_preds(x, y, negatives, logit_temp):
    """fairseq `Wav2Vec2Model.compute_preds`, literally. x, y (B, M, F); negatives (K, B, M, F)."""
    neg_is_pos = (y == negatives).all(-1)
    y = y.unsqueeze(0)
    targets = torch.cat([y, negatives], dim=0)
    logits = torch.cosine_similarity(x.float(), targets.float(), dim=-1)
    logits = logits / logit_temp
    logits = logits.type_as(x)
    if neg_is_pos.any():
        logits[1:][neg_is_pos] = float("-inf")
    return logits  # (1+K, B, M)


def _fairseq_logits(context, targets, idx, batch, kappa):
    """Our flat (N, ...) inputs through fairseq's (B, M, F) layout, rows back in (b, t) order."""
    n, dim = targets.shape
    negs = targets[idx.flatten()].view(batch, n // batch, -1, dim)  # (B, M, K, F)
    negs = negs.permute(2, 0, 1, 3)  # (K, B, M, F)
    ref = fairseq_compute_preds(
        context.view(batch, -1, dim), targets.view(batch, -1, dim), negs, kappa
    )
    # fairseq's get_logits orders rows t-major; the summed loss does not depend on the order.
    return ref.permute(1, 2, 0).reshape(n, -1)


def test_logits_equal_fairseq_compute_preds_including_neg_is_pos():
    g = torch.Generator().manual_seed(0)
    batch, masked, dim = 3, 7, 16
    context = torch.randn(batch * masked, dim, generator=g)
    targets = torch.randn(batch * masked, dim, generator=g)
    targets[4] = targets[1]  # two frames of utterance 0 with the same code: a -inf distractor
    idx = sample_negatives(torch.full((batch,), masked), 20, generator=g)
    assert (idx[1] == 4).any()
    ours = contrastive_logits(context, targets, idx, logit_temperature=0.1)
    reference = _fairseq_logits(context, targets, idx, batch, 0.1)
    assert torch.equal(torch.isinf(ours), torch.isinf(reference))
    assert torch.isneginf(ours[1, 1:][idx[1] == 4]).all()
    finite = torch.isfinite(reference)
    torch.testing.assert_close(ours[finite], reference[finite], rtol=0, atol=1e-5)
    assert ours.shape == (batch * masked, 21) and ours.dtype == torch.float32


def test_identical_code_ids_give_minus_inf_even_if_vectors_differ_in_the_last_bit():
    g = torch.Generator().manual_seed(1)
    context = torch.randn(6, 8, generator=g)
    targets = torch.randn(6, 8, generator=g)
    targets[2] = targets[0] * (1 + 1e-7)  # straight-through Gumbel: same code, not bit-equal
    # Rows 0 and 2 share both codes; row 5 shares one group's code with them.
    ids = torch.tensor([[1, 2], [3, 4], [1, 2], [5, 6], [7, 0], [1, 3]])
    idx = torch.tensor([[2, 1, 5], [0, 2, 3], [0, 1, 4], [4, 5, 0], [3, 5, 1], [0, 2, 3]])
    logits = contrastive_logits(context, targets, idx, target_ids=ids, logit_temperature=0.5)
    inf = torch.isneginf(logits)
    expected = torch.zeros_like(inf)
    expected[0, 1] = expected[2, 1] = (
        True  # row 0 drew row 2 and vice versa; row 5 shares one group only
    )
    assert torch.equal(inf, expected)
    cosine = torch.cosine_similarity(context[:, None], targets[idx], dim=-1) / 0.5  # (N, K)
    torch.testing.assert_close(
        logits[:, 1:][~expected[:, 1:]], cosine[~expected[:, 1:]], rtol=0, atol=1e-5
    )


def test_codebook_negatives_are_appended_with_their_own_identity_check():
    g = torch.Generator().manual_seed(2)
    context, targets = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    ids = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]])
    extra = torch.randn(4, 3, 8, generator=g)
    extra_ids = torch.tensor([[[0, 1], [0, 2], [1, 1]]] * 4)  # column 0 equals row 0's own code
    idx = torch.tensor([[1], [2], [3], [0]])
    logits = contrastive_logits(
        context,
        targets,
        idx,
        target_ids=ids,
        extra_negatives=extra,
        extra_ids=extra_ids,
        logit_temperature=0.2,
    )
    assert logits.shape == (4, 1 + 1 + 3)
    assert torch.isneginf(logits[0, 2]) and torch.isfinite(logits[1:, 2:]).all()
    cosine = torch.cosine_similarity(context[:, None], extra, dim=-1) / 0.2
    torch.testing.assert_close(logits[1:, 2:], cosine[1:], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[0, 3:], cosine[0, 1:], rtol=0, atol=1e-5)


def test_logits_are_fp32_for_bf16_inputs():
    g = torch.Generator().manual_seed(3)
    context, targets = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    idx = sample_negatives(torch.tensor([3, 3]), 2, generator=g)
    low = contrastive_logits(context.bfloat16(), targets.bfloat16(), idx, logit_temperature=0.1)
    assert low.dtype == torch.float32
    reference = contrastive_logits(
        context.bfloat16().float(), targets.bfloat16().float(), idx, logit_temperature=0.1
    )
    torch.testing.assert_close(low, reference, rtol=0, atol=1e-6)


def test_per_utterance_tables_give_the_gathered_logits_and_gradients():
    # Unequal counts (one row empty), random frame positions, within + cross-sample negatives.
    g = torch.Generator().manual_seed(5)
    time_mask = torch.rand(4, 9, generator=g) < 0.6
    time_mask[1] = False
    time_mask[0, :2] = True
    counts = time_mask.sum(1)
    n, dim = int(counts.sum()), 16
    idx = sample_negatives(counts, 6, 3, generator=g)
    ids = torch.randint(3, (n, 2), generator=g)  # few codes: some -inf distractors

    def run(**table) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        context = torch.randn(
            n, dim, generator=torch.Generator().manual_seed(1), requires_grad=True
        )
        targets = torch.randn(
            n, dim, generator=torch.Generator().manual_seed(2), requires_grad=True
        )
        logits = contrastive_logits(
            context, targets, idx, target_ids=ids, logit_temperature=0.1, **table
        )
        logits.masked_fill(torch.isinf(logits), 0.0).pow(2).sum().backward()
        assert context.grad is not None and targets.grad is not None
        return logits.detach(), context.grad, targets.grad

    gathered = run()  # every column gathered as (N, K, F) candidates, as fairseq
    tables = run(time_mask=time_mask, num_within=6)
    assert torch.equal(torch.isinf(tables[0]), torch.isinf(gathered[0]))
    assert torch.isinf(gathered[0]).any()
    for got, want in zip(tables, gathered, strict=True):  # fp32 sums in another order
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _allocated_bytes(batch: int, frames: int, masked: int, negatives: int, dim: int) -> int:
    """Bytes of the tensors the logits allocate, forward and backward (views not counted)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Allocations(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            outs = out if isinstance(out, (tuple, list)) else (out,)
            for spec, tensor in zip(func._schema.returns, outs, strict=False):
                if isinstance(tensor, torch.Tensor) and spec.alias_info is None:
                    Allocations.total += tensor.untyped_storage().nbytes()
            return out

    g = torch.Generator().manual_seed(0)
    time_mask = torch.rand(batch, frames, generator=g).argsort(1) < masked  # M per row
    n = batch * masked
    context = torch.randn(n, dim, generator=g, requires_grad=True)
    targets = torch.randn(n, dim, generator=g, requires_grad=True)
    idx = sample_negatives(time_mask.sum(1), negatives, generator=g)
    ids = torch.randint(320, (n, 2), generator=g)
    with Allocations():
        logits = contrastive_logits(
            context,
            targets,
            idx,
            time_mask=time_mask,
            num_within=negatives,
            target_ids=ids,
            logit_temperature=0.1,
        )
        logits.sum().backward()
    return Allocations.total


def test_logits_memory_is_linear_in_the_batch_and_as_bench_flops_computes():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from flops import logits_bytes

    # BASE at 15.6 s: 779 frames, ~380 masked, 100 negatives, 256 dims; batch 2 and 4 of 64.
    shape = {"frames": 779, "masked": 380, "negatives": 100, "dim": 256}
    two, four = _allocated_bytes(2, **shape), _allocated_bytes(4, **shape)
    assert four == pytest.approx(2 * two, rel=0.01)  # linear; the (N, N) table was quadratic
    for batch, measured in ((2, two), (4, four)):
        analytic = logits_bytes(batch, 779, 380, 100, 256)
        assert measured == pytest.approx(analytic, rel=0.1), (batch, measured, analytic)
    # The (N, N) table alone was 4 N^2 bytes forward: at batch 64 (N = 24,320) 2.4 GB.
    assert logits_bytes(64, 779, 380, 100, 256) < 0.7 * 4 * (64 * 380) ** 2
