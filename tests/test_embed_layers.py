"""Tests for w2vkit.embed.layers against explicit loops and hand-computed values."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from w2vkit.embed import (
    FrequencyEmbedding,
    ScaledEmbedding,
    TokenEmbedding,
    one_hot_embedding,
    pitch_to_tokens,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- one-hot lookup -------------------------------------------------------------------------


def test_lookup_equals_one_hot_matmul_exactly():
    table = nn.Embedding(29, 7)
    ids = torch.randint(0, 29, (2, 3, 4), generator=_gen())  # (B, S, T), as in the notes
    out = one_hot_embedding(ids, table.weight)
    assert out.shape == (2, 3, 4, 7)
    # Each output is 1 * w plus exact zeros, so the matmul reproduces the lookup bit for bit.
    assert torch.equal(out, table(ids))


def test_one_hot_embedding_hand_values_and_soft_ids():
    weight = torch.arange(12.0).reshape(4, 3)  # row v = [3v, 3v+1, 3v+2]
    out = one_hot_embedding(torch.tensor([[2, 0]]), weight)
    assert torch.equal(out, torch.tensor([[[6.0, 7.0, 8.0], [0.0, 1.0, 2.0]]]))
    probs = torch.tensor([[0.5, 0.0, 0.25, 0.25]])  # (1, V)
    expected = sum(probs[0, v] * weight[v] for v in range(4))
    assert torch.allclose(one_hot_embedding(probs, weight)[0], expected)
    assert torch.allclose(expected, torch.tensor([3.75, 4.75, 5.75]))  # 0.5 r0 + .25 r2 + .25 r3


def test_one_hot_embedding_rejects_bad_input():
    weight = torch.zeros(4, 3)
    message = (
        "token id 4 at index (1,) is outside the table of 4 tokens: ids must lie in [0, 4); "
        "id 4 needs at least 5 rows"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        one_hot_embedding(torch.tensor([0, 4]), weight)
    with pytest.raises(ValueError, match=re.escape("token id -1 at index (0, 1) is outside")):
        one_hot_embedding(torch.tensor([[2, -1]]), weight)
    with pytest.raises(ValueError, match="V=4"):
        one_hot_embedding(torch.rand(2, 5), weight)
    with pytest.raises(ValueError, match=r"\(V, D\)"):
        one_hot_embedding(torch.tensor([0]), torch.zeros(4))


# --- max_norm -------------------------------------------------------------------------------


def test_max_norm_renormalises_only_looked_up_rows():
    emb = TokenEmbedding(10, 5, max_norm=1.0, generator=_gen(1))
    with torch.no_grad():
        emb.weight.mul_(3.0)
        emb.weight[5] = torch.tensor([0.3, 0.0, 0.4, 0.0, 0.0])  # norm 0.5 < max_norm
    before = emb.weight.detach().clone()
    assert (before.norm(dim=1)[[0, 3, 7]] > 1.0).all()
    ids = torch.tensor([[0, 3, 3, 7, 5]])
    out = emb(ids)
    after = emb.weight.detach()
    for row in range(10):
        if row in (0, 3, 7):  # reference: torch's renorm rule w * max_norm / (||w|| + 1e-7)
            expected = before[row] * (1.0 / (before[row].norm() + 1e-7))
            assert torch.allclose(after[row], expected, atol=1e-6)
            assert after[row].norm() <= 1.0 + 1e-6
        else:  # rows not looked up, and the short row 5, are left exactly as they were
            assert torch.equal(after[row], before[row])
    assert torch.equal(out[0], after[ids[0]])


# --- ScaledEmbedding ------------------------------------------------------------------------


@pytest.mark.parametrize("smooth", [False, True])
def test_scaled_embedding_init_matches_explicit_formula(smooth):
    num, dim, scale = 6, 3, 10.0
    emb = ScaledEmbedding(num, dim, scale=scale, smooth=smooth, generator=_gen(2))
    raw = torch.randn(num, dim, generator=_gen(2))  # the same draw the module made
    expected = raw.clone()
    if smooth:  # row n = (raw[0] + ... + raw[n]) / sqrt(n + 1)
        running = torch.zeros(dim)
        for n in range(num):
            running = running + raw[n]
            expected[n] = running / math.sqrt(n + 1)
    assert torch.allclose(emb.weight, expected, atol=1e-6)
    assert torch.allclose(emb.state_dict()["embedding.weight"], expected / scale, atol=1e-7)
    ids = torch.tensor([[5, 0, 2]])
    assert torch.equal(emb(ids), one_hot_embedding(ids, emb.weight))


def test_scaled_embedding_boosts_gradient_and_sgd_step():
    scale, lr = 10.0, 1e-3
    # float64: the plain step is ~1e-6 on weights ~1, below float32's resolution of the difference
    scaled = ScaledEmbedding(8, 4, scale=scale, generator=_gen(3)).double()
    plain = nn.Embedding(8, 4, _weight=scaled.weight.detach().clone())
    ids = torch.tensor([[1, 2, 2, 6], [0, 1, 6, 6]])
    target = torch.randn(2, 4, 4, generator=_gen(4), dtype=torch.float64)
    for module in (scaled, plain):
        (module(ids) * target).sum().backward()
    grad_plain = plain.weight.grad
    assert grad_plain[[3, 4, 5, 7]].abs().sum() == 0 and grad_plain.abs().sum() > 0
    assert torch.allclose(scaled.embedding.weight.grad, scale * grad_plain, rtol=1e-12)

    before_scaled, before_plain = scaled.weight.detach().clone(), plain.weight.detach().clone()
    torch.optim.SGD(scaled.parameters(), lr=lr).step()
    torch.optim.SGD(plain.parameters(), lr=lr).step()
    delta_scaled = scaled.weight.detach() - before_scaled
    delta_plain = plain.weight.detach() - before_plain
    assert torch.allclose(delta_scaled, scale**2 * delta_plain, rtol=1e-8, atol=1e-12)


def test_scaled_embedding_adam_step_is_boosted_by_scale_only():
    # Adam divides by the gradient's magnitude, so the boost is `scale`, not `scale**2`.
    scale, lr = 10.0, 1e-2
    scaled = ScaledEmbedding(8, 4, scale=scale, generator=_gen(5)).double()
    plain = nn.Embedding(8, 4, _weight=scaled.weight.detach().clone())
    ids = torch.tensor([[1, 2, 2, 6]])
    before_scaled, before_plain = scaled.weight.detach().clone(), plain.weight.detach().clone()
    for module in (scaled, plain):
        module(ids).pow(2).sum().backward()
        torch.optim.Adam(module.parameters(), lr=lr).step()
    delta_scaled = scaled.weight.detach() - before_scaled
    delta_plain = plain.weight.detach() - before_plain
    assert delta_plain[1].abs().min() > 0.5 * lr
    assert torch.allclose(delta_scaled, scale * delta_plain, rtol=1e-6, atol=1e-12)


def test_generator_fixes_init_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = TokenEmbedding(5, 3, generator=_gen(7))
    b = ScaledEmbedding(5, 3, smooth=True, generator=_gen(7))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.weight, TokenEmbedding(5, 3, generator=_gen(7)).weight)
    assert not torch.equal(a.weight, TokenEmbedding(5, 3, generator=_gen(8)).weight)
    assert torch.equal(b.weight, ScaledEmbedding(5, 3, smooth=True, generator=_gen(7)).weight)


# --- FrequencyEmbedding ---------------------------------------------------------------------


def test_frequency_embedding_matches_explicit_loop_and_gradient():
    fe = FrequencyEmbedding(16, 3, generator=_gen(6))  # defaults: scale 10, smooth, weight 0.2
    x = torch.randn(2, 3, 10, 5, generator=_gen(7))  # (B, C, F<num_freqs, T)
    out = fe(x)
    table = fe.table.weight.detach()  # (num_freqs, C) effective
    expected = torch.empty_like(x)
    for b in range(2):
        for c in range(3):
            for f in range(10):
                for t in range(5):
                    expected[b, c, f, t] = x[b, c, f, t] + 0.2 * table[f, c]
    assert torch.allclose(out, expected, atol=1e-7)

    out.sum().backward()  # d out / d stored[f, c] = weight * scale * B * T = 0.2 * 10 * 2 * 5
    grad = fe.table.embedding.weight.grad
    assert torch.allclose(grad[:10], torch.full((10, 3), 20.0))
    assert torch.equal(grad[10:], torch.zeros(6, 3))


@pytest.mark.parametrize("shape", [(2, 3, 17, 5), (2, 4, 10, 5), (3, 10, 5)])
def test_frequency_embedding_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"C=3, F<=16"):
        FrequencyEmbedding(16, 3)(torch.zeros(shape))


# --- TokenEmbedding pooling -----------------------------------------------------------------


def test_pool_equals_per_row_loop_and_ignores_padding():
    emb = TokenEmbedding(12, 4, padding_id=0, generator=_gen(8))
    ids = torch.tensor([[3, 5, 5, 9, 0, 0], [11, 2, 7, 4, 1, 6], [0, 0, 0, 0, 0, 0]])
    padding_mask = ids == 0  # (B, T), True = padded; last row is all padding
    pooled = emb.pool(ids, padding_mask)
    for b in range(3):
        rows = [emb.weight[ids[b, t]] for t in range(6) if not padding_mask[b, t]]
        expected = torch.stack(rows).mean(dim=0) if rows else torch.zeros(4)
        assert torch.allclose(pooled[b], expected, atol=1e-6)
    # Whatever sits at padded positions is ignored when the mask says so.
    noisy = torch.where(padding_mask, torch.randint(1, 12, ids.shape, generator=_gen(9)), ids)
    assert torch.allclose(emb.pool(noisy, padding_mask), pooled, atol=1e-6)
    assert torch.allclose(emb.pool(ids), pooled)  # mask derived from padding_id
    assert torch.equal(emb.weight[0], torch.zeros(4))

    emb(ids).sum().backward()  # padding positions are looked up, yet the padding row gets no grad
    assert torch.equal(emb.embedding.weight.grad[0], torch.zeros(4))
    assert emb.embedding.weight.grad[3].abs().sum() > 0


def test_pool_without_padding_is_plain_mean_and_checks_mask():
    emb = TokenEmbedding(6, 2, generator=_gen(10))
    ids = torch.tensor([[0, 1, 5]])
    assert torch.allclose(emb.pool(ids), emb.weight[[0, 1, 5]].mean(dim=0, keepdim=True))
    with pytest.raises(ValueError, match="padding_mask must be bool"):
        emb.pool(ids, torch.zeros(1, 3, dtype=torch.long))
    message = "token id 6 at index (1, 0) is outside the table of 6 tokens: ids must lie in [0, 6)"
    with pytest.raises(ValueError, match=re.escape(message)):
        emb(torch.tensor([[5], [6]]))
    with pytest.raises(ValueError, match="padding_id"):
        TokenEmbedding(6, 2, padding_id=6)


# --- pitch tokens ---------------------------------------------------------------------------


def test_pitch_to_tokens_hand_computed():
    # 5 levels an octave apart: centres 100, 200, 400, 800, 1600 Hz; token 5 = unvoiced.
    f0 = torch.tensor([[100.0, 200.0, 270.0, 300.0, 1600.0, 5000.0, 50.0, 0.0, -3.0, math.nan]])
    # log2(2.7) = 1.43 -> 1, log2(3) = 1.58 -> 2; out-of-range clamps; <= 0 and NaN unvoiced.
    expected = torch.tensor([[0, 1, 1, 2, 4, 4, 0, 5, 5, 5]])
    assert torch.equal(pitch_to_tokens(f0, num_levels=5, fmin_hz=100.0, fmax_hz=1600.0), expected)
    # Defaults (128 levels, 50-1100 Hz): 100 Hz -> 127 ln2/ln22 = 28.48, 440 Hz -> 127 ln8.8/ln22
    # = 89.35.
    default = pitch_to_tokens(torch.tensor([[50.0, 100.0, 440.0, 1100.0, 0.0]]))
    assert default.tolist() == [[0, 28, 89, 127, 128]]


def test_pitch_to_tokens_rejects_bad_arguments():
    with pytest.raises(ValueError, match="float tensor in Hz"):
        pitch_to_tokens(torch.tensor([[100]]))
    with pytest.raises(ValueError, match="fmin_hz=200.0 fmax_hz=100.0"):
        pitch_to_tokens(torch.ones(1, 2), fmin_hz=200.0, fmax_hz=100.0)
    with pytest.raises(ValueError, match="num_levels"):
        pitch_to_tokens(torch.ones(1, 2), num_levels=1)


def test_padded_pitch_batch_pools_like_each_track_alone():
    num_levels = 128
    pad = num_levels + 1  # vocabulary: levels, unvoiced, padding
    emb = TokenEmbedding(num_levels + 2, 8, padding_id=pad, generator=_gen(11))
    tracks = [torch.tensor([0.0, 110.0, 220.0, 221.0, 0.0]), torch.tensor([440.0, 880.0])]
    batch = torch.zeros(2, 5)
    padding_mask = torch.ones(2, 5, dtype=torch.bool)
    for b, track in enumerate(tracks):
        batch[b, : len(track)] = track
        padding_mask[b, : len(track)] = False
    ids = pitch_to_tokens(batch).masked_fill(padding_mask, pad)  # (B, T)
    pooled = emb.pool(ids)  # (B, D)
    for b, track in enumerate(tracks):
        alone = emb.pool(pitch_to_tokens(track[None]))
        assert torch.allclose(pooled[b], alone[0], atol=1e-6)
