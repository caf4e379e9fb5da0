"""The CPU dropout: its keep probability, scale, mask in the backward, and determinism."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from w2vkit.model.dropout import Dropout, dropout, keep_mask

NUM = 1 << 22  # 4 M elements: a 5-sigma band on a kept fraction is about 0.0012 wide


def _sigmas(fraction: float, prob: float, num: int) -> float:
    return abs(fraction - prob) / math.sqrt(prob * (1 - prob) / num)


@pytest.mark.parametrize(("prob", "dropped_levels"), [(0.1, 6554), (0.5, 32768), (0.02, 1311)])
def test_keep_mask_keeps_the_rounded_probability_in_each_quarter_of_a_draw(prob, dropped_levels):
    # Each int64 draw gives four 16-bit integers (positions 4i .. 4i + 3): a draw from [0, 2^63)
    # would leave the last quarter's sign bit 0 and keep all of them at prob 0.5.
    torch.manual_seed(0)
    keep, scale = keep_mask(torch.Size([NUM]), prob)
    kept = 1 - dropped_levels / 65536
    assert keep.dtype == torch.bool and scale == 1 / kept
    for quarter in range(4):
        fraction = keep[quarter::4].double().mean().item()
        assert _sigmas(fraction, kept, NUM // 4) < 5, (quarter, fraction)


def test_dropout_zeroes_or_scales_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.rand(NUM) + 0.5
    y = dropout(x, 0.1, training=True)
    scale = 65536 / (65536 - 6554)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] * scale, rtol=1e-6, atol=0)
    ones = dropout(torch.ones(NUM), 0.1, training=True)
    standard_error = math.sqrt(0.1 / 0.9 / NUM)
    assert abs(ones.double().mean().item() - 1) < 5 * standard_error


def test_backward_applies_the_forward_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    upstream = torch.randn(64, 33)
    y.backward(upstream)
    assert x.grad is not None
    scale = 65536 / (65536 - round(0.3 * 65536))
    torch.testing.assert_close(x.grad, upstream * (y != 0) * scale, rtol=1e-6, atol=0)


def test_the_same_seed_gives_the_same_mask():
    x = torch.randn(1000)
    torch.manual_seed(3)
    a = dropout(x, 0.2, training=True)
    torch.manual_seed(3)
    b = dropout(x, 0.2, training=True)
    assert torch.equal(a, b) and not torch.equal(a, dropout(x, 0.2, training=True))


@pytest.mark.parametrize(("prob", "training"), [(0.3, False), (0.0, True)])
def test_identity_in_eval_mode_and_at_zero(prob, training):
    x = torch.randn(100)
    assert torch.equal(dropout(x, prob, training), x)


def test_probability_one_drops_everything():
    assert torch.equal(dropout(torch.ones(50), 1.0, training=True), torch.zeros(50))


def test_module_is_an_nn_dropout_that_follows_train_and_eval():
    module = Dropout(0.5)
    assert isinstance(module, torch.nn.Dropout) and repr(module) == repr(torch.nn.Dropout(0.5))
    x = torch.randn(4000)
    assert torch.equal(module.eval()(x), x)
    assert (module.train()(x) == 0).any()
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        Dropout(1.5)


@pytest.mark.parametrize("prob", [1e-6, 1 - 1e-6])
def test_a_probability_that_rounds_to_0_or_1_takes_torch_dropout(prob, monkeypatch):
    # round(p * 2^16) of 0 would never drop, of 2^16 would divide by zero keeping nothing.
    calls = []
    monkeypatch.setattr(F, "dropout", lambda x, p, training: calls.append(p) or x)
    dropout(torch.ones(10), prob, training=True)
    assert calls == [prob]


def test_bf16_input_keeps_its_dtype():
    torch.manual_seed(0)
    x = torch.randn(1000).to(torch.bfloat16)
    y = dropout(x, 0.1, training=True)
    assert y.dtype == torch.bfloat16
    kept = y != 0
    torch.testing.assert_close(y[kept], (x[kept].float() * (65536 / 58982)).to(torch.bfloat16))


def test_non_cpu_tensors_take_torch_dropout(monkeypatch):
    # CUDA's fused dropout is fast; only CPU tensors take the mask above. A meta tensor stands in.
    calls = []
    monkeypatch.setattr(F, "dropout", lambda x, p, training: calls.append(p) or x)
    dropout(torch.empty(3, device="meta"), 0.1, training=True)
    assert calls == [0.1]
