"""Optimizer and LR schedule: fairseq `adam` (decoupled weight decay) and `polynomial_decay`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from w2vkit.pretrain.config import OptimConfig
from w2vkit.pretrain.schedule import PolynomialDecaySchedule, polynomial_decay_lr
from w2vkit.train.optim import build_optimizer


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),  # fairseq calls step_update(0) before the first update: it runs at LR 0
        (1, 0.25),
        (2, 0.5),
        (4, 1.0),  # end of warmup: the peak
        (8, 0.9 * (1 - 4 / 8) ** 2 + 0.1),  # (lr - end) * remaining**power + end, by hand: 0.325
        (10, 0.9 * (1 - 6 / 8) ** 2 + 0.1),
        (12, 0.1),  # total_steps reached: end_lr
        (50, 0.1),
    ],
)
def test_polynomial_decay_values_by_hand(step, expected):
    lr = polynomial_decay_lr(step, lr=1.0, warmup_steps=4, total_steps=12, end_lr=0.1, power=2.0)
    assert lr == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),
        (1, 5e-4 / 32000),
        (16000, 2.5e-4),
        (32000, 5e-4),
        (216000, 2.5e-4),
        (399999, 5e-4 / 368000),
        (400000, 0.0),
    ],
)
def test_fairseq_base_schedule(step, expected):
    # wav2vec2_base_librispeech: lr 5e-4, warmup 32k, linear decay to 0 at 400k (power 1, end 0).
    cfg = OptimConfig()
    lr = polynomial_decay_lr(
        step,
        lr=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        total_steps=400_000,
        end_lr=cfg.end_lr,
        power=cfg.power,
    )
    assert lr == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_no_warmup_starts_at_peak():
    assert polynomial_decay_lr(0, lr=2.0, warmup_steps=0, total_steps=10) == 2.0
    assert polynomial_decay_lr(5, lr=2.0, warmup_steps=0, total_steps=10) == pytest.approx(1.0)


def test_schedule_sets_optimizer_lr_and_round_trips():
    model = nn.Linear(3, 2)
    cfg = OptimConfig(lr=1.0, warmup_steps=4, end_lr=0.1, power=2.0)
    optimizer = build_optimizer(model, cfg)
    schedule = PolynomialDecaySchedule(optimizer, cfg, total_steps=12)
    assert optimizer.param_groups[0]["lr"] == 0.0  # before the first update
    schedule.set_step(8)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.325)
    other = PolynomialDecaySchedule(build_optimizer(model, cfg), cfg, total_steps=12)
    other.load_state_dict(schedule.state_dict())
    assert other.step_count == 8 and other.optimizer.param_groups[0]["lr"] == pytest.approx(0.325)


def _one_step_with_zero_gradients(kind: str) -> tuple[dict, dict]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, OptimConfig(optimizer=kind, lr=0.1, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return before, model.state_dict()


def test_adamw_decays_every_parameter_decoupled():
    # fairseq's adam: p <- p - lr * wd * p, on weights, biases and LayerNorm alike, independent of the
    # gradient (zero here, so Adam's own step is exactly 0).
    before, after = _one_step_with_zero_gradients("adamw")
    for name, value in before.items():
        torch.testing.assert_close(
            after[name], value * (1 - 0.1 * 0.5), rtol=0, atol=1e-7, msg=name
        )


def test_adam_puts_weight_decay_into_the_gradient():
    # torch Adam adds g = wd * p to the gradient, which Adam then normalises: the first step is
    # lr * g / (|g| + eps / sqrt(1 - b2)) with fairseq's epsilon placement, ~lr * sign(p).
    before, after = _one_step_with_zero_gradients("adam")
    weight = before["0.weight"]
    grad = 0.5 * weight
    step = 0.1 * grad / (grad.abs() + 1e-6 / math.sqrt(1 - 0.98))
    torch.testing.assert_close(after["0.weight"], weight - step, rtol=0, atol=1e-6)


def test_betas_eps_reach_the_optimizer():
    optimizer = build_optimizer(nn.Linear(2, 2), OptimConfig())
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert group["betas"] == (0.9, 0.98) and group["eps"] == 1e-6 and group["weight_decay"] == 0.01


def _fairseq_adam_reference(params, grads, *, lr, betas, eps, weight_decay):
    """fairseq/optim/adam.py's update, written out: eps outside the bias correction."""
    beta1, beta2 = betas
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, step_grads in enumerate(grads, start=1):
        for i, g in enumerate(step_grads):
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
            params[i] = params[i] - weight_decay * lr * params[i]
            params[i] = params[i] - step_size * m[i] / (np.sqrt(v[i]) + eps)
    return params


@pytest.mark.parametrize("placement", ["fairseq", "torch"])
def test_adam_epsilon_placement_matches_fairseq_or_torch(placement):
    rng = np.random.default_rng(0)
    start = rng.standard_normal((3, 4))
    # Small gradients, where the placement of eps matters (sqrt(v) ~ eps).
    grads = [[1e-6 * rng.standard_normal((3, 4))] for _ in range(6)]
    cfg = OptimConfig(lr=1e-2, eps=1e-6, weight_decay=0.01, eps_placement=placement)
    model = torch.nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(start))
    optimizer = build_optimizer(model, cfg)
    for (g,) in grads:
        model.weight.grad = torch.from_numpy(g).float()
        optimizer.step()
    expected = _fairseq_adam_reference(
        [start.copy()], grads, lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01
    )[0]
    gap = np.abs(model.weight.detach().double().numpy() - expected).max()
    if placement == "fairseq":
        assert gap < 1e-6
    else:
        assert gap > 1e-4  # torch's AdamW is a different update at these gradient scales


def test_fairseq_epsilon_counter_resumes_with_the_optimizer_state():
    cfg = OptimConfig(lr=1e-2)
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, cfg)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()
    again = build_optimizer(torch.nn.Linear(2, 2), cfg)
    again.load_state_dict(optimizer.state_dict())
    group = again.param_groups[0]
    assert group["num_steps"] == 3
    assert group["eps"] == pytest.approx(1e-6 / math.sqrt(1 - 0.98**3))
