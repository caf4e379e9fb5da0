"""Optimizer and LR schedule: fairseq `adam` (decoupled weight decay) and `polynomial_decay`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from w2vkit.train.config import OptimConfig
from w2vkit.train.optim import PolynomialDecaySchedule, build_optimizer, polynomial_decay_lr


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
    # torch Adam adds wd * p to the gradient, which Adam then normalises: the step is ~lr * sign(p).
    before, after = _one_step_with_zero_gradients("adam")
    weight = before["0.weight"]
    torch.testing.assert_close(
        after["0.weight"], weight - 0.1 * torch.sign(weight), rtol=0, atol=1e-4
    )


def test_betas_eps_reach_the_optimizer():
    optimizer = build_optimizer(nn.Linear(2, 2), OptimConfig())
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert group["betas"] == (0.9, 0.98) and group["eps"] == 1e-6 and group["weight_decay"] == 0.01
