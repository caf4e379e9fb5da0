"""Gumbel product quantizer: hard codes in eval, fairseq's straight-through Gumbel in training,
perplexities, and the temperature schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from w2vkit.model.config import QuantizerConfig, large
from w2vkit.model.quantizer import GumbelVectorQuantizer
from w2vkit.pretrain.schedule import gumbel_temperature

G, V, CODE_DIM, IN_DIM = 2, 8, 12, 16


def _quantizer(seed: int = 0) -> GumbelVectorQuantizer:
    torch.manual_seed(seed)
    return GumbelVectorQuantizer(IN_DIM, G, V, CODE_DIM)


def _fairseq_quantize(
    q: GumbelVectorQuantizer, x: torch.Tensor, onehot: torch.Tensor
) -> torch.Tensor:
    """fairseq `GumbelVectorQuantizer.forward`'s product-sum, written literally. onehot (N*G, V)."""
    n = x.shape[0]
    return (onehot.view(n, G * V, 1) * q.codevectors).view(n, G, V, -1).sum(-2).view(n, -1)


def test_eval_picks_exactly_one_entry_per_group_as_an_exact_gather():
    q = _quantizer().eval()
    x = torch.randn(40, IN_DIM)
    out = q(x, temperature=2.0)
    assert out.quantized.shape == (40, CODE_DIM) and out.codes.shape == (40, G)
    logits = q.weight_proj(x).view(40, G, V)
    assert torch.equal(out.codes, logits.argmax(-1))
    table = q.codevectors.view(G, V, CODE_DIM // G)
    gathered = torch.cat([table[g, out.codes[:, g]] for g in range(G)], dim=-1)  # (N, G*d)
    assert torch.equal(out.quantized, gathered)
    assert torch.equal(q.codevectors_for(out.codes), gathered)


def test_eval_ignores_temperature_and_generator():
    q = _quantizer().eval()
    x = torch.randn(30, IN_DIM)
    a = q(x, temperature=2.0, generator=torch.Generator().manual_seed(1))
    b = q(x, temperature=0.1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.quantized, b.quantized) and torch.equal(a.codes, b.codes)


def test_training_equals_fairseq_gumbel_softmax_forward_and_backward():
    q = _quantizer().train()
    x = torch.randn(50, IN_DIM, requires_grad=True)
    weights = torch.randn(50, CODE_DIM)  # a random downstream loss, sum(quantized * weights)
    out = q(x, temperature=0.7, generator=torch.Generator().manual_seed(5))
    (out.quantized * weights).sum().backward()
    ours = [x.grad.clone(), q.weight_proj.weight.grad.clone(), q.codevectors.grad.clone()]
    for tensor in (x, q.weight_proj.weight, q.codevectors):
        tensor.grad = None
    # fairseq: F.gumbel_softmax(logits, tau, hard=True) on (N*G, V); a CPU generator and the global
    # generator with the same seed give the same exponential draws, so the noise is identical.
    torch.manual_seed(5)
    onehot = F.gumbel_softmax(q.weight_proj(x).float().view(-1, V), tau=0.7, hard=True)
    reference = _fairseq_quantize(q, x, onehot)
    (reference * weights).sum().backward()
    torch.testing.assert_close(out.quantized, reference, rtol=1e-6, atol=1e-6)
    assert torch.equal(out.codes, onehot.view(50, G, V).argmax(-1))
    for got, want in zip(
        ours, [x.grad, q.weight_proj.weight.grad, q.codevectors.grad], strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_straight_through_gradients_reach_codevectors_weight_proj_and_input():
    q = _quantizer().train()
    x = torch.randn(64, IN_DIM, requires_grad=True)
    out = q(x, temperature=2.0, generator=torch.Generator().manual_seed(0))
    (out.quantized * torch.randn_like(out.quantized)).sum().backward()
    for name, grad in [
        ("x", x.grad),
        ("weight_proj.weight", q.weight_proj.weight.grad),
        ("weight_proj.bias", q.weight_proj.bias.grad),
        ("codevectors", q.codevectors.grad),
    ]:
        assert grad is not None and grad.abs().sum() > 0, name
    # Only the chosen entries receive a codevector gradient (the forward is a hard pick).
    used = torch.zeros(G * V, dtype=torch.bool)
    used[(out.codes + torch.arange(G) * V).flatten()] = True
    touched = q.codevectors.grad[0].abs().sum(-1) > 0
    assert torch.equal(touched, used)


def test_training_noise_comes_from_the_generator():
    q = _quantizer().train()
    x = torch.randn(200, IN_DIM)
    a = q(x, 2.0, torch.Generator().manual_seed(3))
    b = q(x, 2.0, torch.Generator().manual_seed(3))
    c = q(x, 2.0, torch.Generator().manual_seed(4))
    assert torch.equal(a.codes, b.codes)
    assert not torch.equal(a.codes, c.codes)
    # The noisy pick differs from the noiseless argmax at temperature 2 for some frames.
    assert not torch.equal(a.codes, q.weight_proj(x).view(200, G, V).argmax(-1))


def _hand_perplexity(probs: torch.Tensor) -> float:
    """sum_g exp(-sum_v p log(p + 1e-7)) of the mean distribution, explicit loops in float64."""
    total = 0.0
    mean = probs.detach().double().mean(0)
    for g in range(mean.shape[0]):
        total += math.exp(-sum(float(p) * math.log(float(p) + 1e-7) for p in mean[g]))
    return total


def test_prob_perplexity_matches_a_hand_computation_and_lies_in_range():
    q = _quantizer().train()
    x = torch.randn(100, IN_DIM)
    out = q(x, 2.0, torch.Generator().manual_seed(0))
    probs = q.weight_proj(x).view(100, G, V).softmax(-1)  # no noise, no temperature
    assert out.prob_perplexity.item() == pytest.approx(_hand_perplexity(probs), rel=1e-5)
    assert G <= out.prob_perplexity.item() <= G * V
    out.prob_perplexity.backward()  # the diversity loss needs it differentiable
    assert q.weight_proj.weight.grad.abs().sum() > 0


def test_perplexity_extremes_are_g_and_g_times_v():
    q = _quantizer().eval()
    with torch.no_grad():
        q.weight_proj.weight.zero_()
        q.weight_proj.bias.zero_()
    uniform = q(torch.randn(10, IN_DIM), 1.0)
    assert uniform.prob_perplexity.item() == pytest.approx(G * V, rel=1e-5)
    with torch.no_grad():
        q.weight_proj.bias[[1, V + 5]] = (
            100.0  # every frame picks entry 1 in group 0, entry 5 in group 1
        )
    collapsed = q(torch.randn(10, IN_DIM), 1.0)
    assert collapsed.prob_perplexity.item() == pytest.approx(G, rel=1e-5)
    assert collapsed.code_perplexity.item() == pytest.approx(G, rel=1e-5)
    assert collapsed.codes.tolist() == [[1, 5]] * 10


def test_code_perplexity_matches_a_hand_count():
    q = _quantizer().eval()
    x = torch.randn(75, IN_DIM)
    out = q(x, 1.0)
    total = 0.0
    for g in range(G):
        counts = [int((out.codes[:, g] == v).sum()) for v in range(V)]
        entropy = -sum(c / 75 * math.log(c / 75 + 1e-7) for c in counts)
        total += math.exp(entropy)
    assert out.code_perplexity.item() == pytest.approx(total, rel=1e-5)
    assert not out.code_perplexity.requires_grad


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 2.0),
        (1, 2.0 * 0.999995),
        (100_000, 2.0 * 0.999995**100_000),
        (277_258, 2.0 * 0.999995**277_258),
        (277_259, 0.5),
        (1_000_000, 0.5),
    ],
)
def test_base_temperature_schedule(step, expected):
    assert gumbel_temperature(step, QuantizerConfig()) == pytest.approx(expected, rel=1e-12)


def test_base_temperature_reaches_its_floor_between_277258_and_277259():
    cfg = QuantizerConfig()
    assert gumbel_temperature(277_258, cfg) > 0.5  # ln(0.25) / ln(0.999995) = 277258.18
    assert gumbel_temperature(277_259, cfg) == 0.5


def test_large_temperature_floor_is_0_1():
    cfg = large().quantizer
    assert gumbel_temperature(599_144, cfg) > 0.1  # ln(0.05) / ln(0.999995) = 599144.96
    assert gumbel_temperature(599_145, cfg) == 0.1


def test_temperature_is_a_pure_function_of_the_optimizer_step():
    # No hidden counter: forward calls (e.g. gradient accumulation) cannot advance the schedule.
    cfg = QuantizerConfig()
    q = _quantizer().train()
    before = [gumbel_temperature(s, cfg) for s in (0, 10, 1000)]
    for _ in range(3):
        q(torch.randn(8, IN_DIM), gumbel_temperature(10, cfg))
    assert [gumbel_temperature(s, cfg) for s in (0, 10, 1000)] == before
    assert not any("temp" in name for name, _ in q.named_buffers())
