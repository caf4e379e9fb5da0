"""`train.diagnostics`: per-module gradient norms on the scale of `gnorm`, the logit spread and the
feature RMS, against explicit computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from w2vkit.model.wav2vec2 import PretrainOutput
from w2vkit.pretrain.wav2vec2 import logit_spread
from w2vkit.report import plots
from w2vkit.train.metrics import module_grad_norms


def test_module_gradient_norms_are_each_modules_share_of_gnorm():
    torch.manual_seed(0)
    model = nn.Module()
    model.a, model.b, model.unused = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(2, 2)
    model.b(model.a(torch.randn(5, 3))).sum().backward()
    raw_a = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.a.parameters()))
    raw_b = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.b.parameters()))
    gnorm = 0.5  # the update's normalised norm: the raw norms rescaled to it
    norms = module_grad_norms(model, gnorm)
    assert set(norms) == {"grad_norm/a", "grad_norm/b"}  # no gradient: not logged
    scale = gnorm / math.hypot(raw_a, raw_b)
    assert norms["grad_norm/a"] == pytest.approx(raw_a * scale, rel=1e-6)
    assert norms["grad_norm/b"] == pytest.approx(raw_b * scale, rel=1e-6)
    assert math.hypot(*norms.values()) == pytest.approx(gnorm, rel=1e-6)


def test_logit_spread_by_hand():
    inf = math.inf
    logits = torch.tensor([[3.0, 1.0, 2.0, -inf], [0.0, 1.0, -1.0, 4.0]])
    output = PretrainOutput(
        logits=logits,
        time_mask=torch.ones(1, 2, dtype=torch.bool),
        frame_padding_mask=None,
        features_penalty=torch.tensor(0.25),
        prob_perplexity=None,
        code_perplexity=None,
        num_vars=0,
        temperature=1.0,
        negative_indices=torch.zeros(2, 3, dtype=torch.long),
    )
    spread = {k: float(v) for k, v in logit_spread(output).items()}
    assert spread == pytest.approx(
        {
            "logit_pos": 1.5,  # (3 + 0) / 2
            "logit_neg": 7.0 / 5,  # (1 + 2 + 1 - 1 + 4) / 5: the -inf negative left out
            "logit_neg_max": 3.0,  # (2 + 4) / 2
            "feature_rms": 0.5,
        },
        rel=1e-6,
    )


def test_the_report_draws_every_module_with_parameters():
    from w2vkit.model.wav2vec2 import Wav2Vec2Model
    from w2vkit.pretrain.registry import build_config
    from w2vkit.train.config import load_layers

    model = Wav2Vec2Model(build_config(load_layers("cpu", [])).model)
    with_parameters = {n for n, m in model.named_children() if any(True for _ in m.parameters())}
    assert with_parameters == set(plots.MODULES)
