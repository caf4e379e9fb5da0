"""data2vec 2.0 pieces against hand-computed values and slow explicit versions: the EMA decay
schedule and update, the teacher's target (mean of instance-normed top-K FFN outputs), the decoder,
the regression loss, and the model's masked-frame assembly."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from w2vkit.config import ConfigError
from w2vkit.model.config import tiny
from w2vkit.model.data2vec2 import Data2Vec2Config, Data2Vec2Model, EMATeacher, teacher_targets
from w2vkit.model.decoder import ConvDecoder
from w2vkit.model.ema import ema_decay_at, ema_update_
from w2vkit.model.normalize import instance_norm_over_time
from w2vkit.model.transformer import TransformerEncoder
from w2vkit.pretrain.data2vec2 import data2vec2_objective, regression_loss, spread


def _tiny_d2v(**changes) -> Data2Vec2Config:
    base = Data2Vec2Config(
        num_clones=2, average_top_k_layers=2, decoder_dim=32, decoder_groups=4, decoder_layers=2
    )
    return replace(base, **changes)


def test_ema_decay_schedule_is_linear_then_flat():
    # start 0.9, end 0.99 over 10 updates: 0.9 + 0.009 per update, then 0.99.
    values = [ema_decay_at(k, start=0.9, end=0.99, anneal_steps=10) for k in (0, 1, 5, 10, 11, 500)]
    assert values == pytest.approx([0.9, 0.909, 0.945, 0.99, 0.99, 0.99], abs=1e-12)
    assert ema_decay_at(0, start=0.9, end=0.99, anneal_steps=0) == 0.99


def test_ema_update_moves_parameters_and_copies_buffers():
    student, teacher = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        student.weight.fill_(3.0)
        teacher.weight.fill_(1.0)
        student.running_mean.fill_(7.0)
    ema_update_(teacher, student, 0.75)
    # 0.75 * 1 + 0.25 * 3 = 1.5; buffers are copied, not averaged.
    assert torch.equal(teacher.weight, torch.full((3,), 1.5))
    assert torch.equal(teacher.running_mean, torch.full((3,), 7.0))
    assert torch.equal(student.weight, torch.full((3,), 3.0))


def test_teacher_copies_first_then_steps_once_per_update_and_saves_its_count():
    torch.manual_seed(0)
    student = TransformerEncoder(tiny().transformer)
    teacher = EMATeacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.follow(student, 0, 0.5)  # first call: a copy of the student as it is now
    assert all(
        torch.equal(a, b)
        for a, b in zip(teacher.encoder.parameters(), student.parameters(), strict=True)
    )
    before = [p.clone() for p in teacher.encoder.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(2.0)
    teacher.follow(student, 1, 0.5)
    teacher.follow(student, 1, 0.5)  # a second micro-batch of the same update: no second step
    for old, new in zip(before, teacher.encoder.parameters(), strict=True):
        torch.testing.assert_close(new, old + 1.0)  # halfway towards old + 2
    assert teacher.updates == 1
    restored = EMATeacher(student)
    restored.load_state_dict(teacher.state_dict())
    assert restored.updates == 1
    assert not any(p.requires_grad for p in teacher.parameters())


def test_instance_norm_over_time_matches_torch_and_a_slow_loop_with_padding():
    x = torch.randn(3, 11, 5)
    expected = F.instance_norm(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(instance_norm_over_time(x, None), expected)
    lengths = [11, 7, 4]
    pad = torch.arange(11)[None, :] >= torch.tensor(lengths)[:, None]
    out = instance_norm_over_time(x, pad)
    for b, n in enumerate(lengths):
        for d in range(5):
            values = x[b, :n, d].double().numpy()
            want = (values - values.mean()) / math.sqrt(values.var() + 1e-5)
            np.testing.assert_allclose(out[b, :n, d].numpy(), want, rtol=1e-5, atol=1e-5)


def _slow_ffn_outputs(encoder: TransformerEncoder, x: torch.Tensor) -> list[torch.Tensor]:
    """The post-LN encoder written out, keeping each layer's FFN output before its residual."""
    x = encoder.norm(x + encoder.pos_conv(x))
    outputs = []
    for layer in encoder.layers:
        batch, frames, dim = x.shape
        heads = layer.attention.num_heads
        q, k, v = (
            proj(x).view(batch, frames, heads, -1).transpose(1, 2)
            for proj in (layer.attention.q_proj, layer.attention.k_proj, layer.attention.v_proj)
        )
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // heads), -1)
        attended = layer.attention.out_proj(
            (weights @ v).transpose(1, 2).reshape(batch, frames, dim)
        )
        a = layer.attention_norm(x + attended)
        ffn = layer.fc2(F.gelu(layer.fc1(a)))
        outputs.append(ffn)
        x = layer.ffn_norm(a + ffn)
    return outputs


def test_teacher_target_is_the_mean_of_instance_normed_top_k_ffn_outputs():
    torch.manual_seed(0)
    cfg = replace(tiny().transformer, num_layers=3)
    encoder = TransformerEncoder(cfg).eval()
    x = torch.randn(2, 13, cfg.model_dim)
    with torch.no_grad():
        got = teacher_targets(encoder, x, None, top_k=2, instance_norm=True)
        outputs = _slow_ffn_outputs(encoder, x)[-2:]
    want = torch.zeros_like(got)
    for out in outputs:
        for b in range(2):
            for d in range(cfg.model_dim):
                column = out[b, :, d].double()
                mean, var = column.mean(), column.var(unbiased=False)
                want[b, :, d] += ((column - mean) / torch.sqrt(var + 1e-5)).float() / 2
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    raw = teacher_targets(encoder, x, None, top_k=1, instance_norm=False)
    torch.testing.assert_close(raw, outputs[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", [7, 4])
def test_decoder_keeps_shape_and_adds_a_residual_where_widths_match(kernel):
    torch.manual_seed(0)
    decoder = ConvDecoder(
        16, decoder_dim=16, kernel=kernel, groups=4, num_layers=2, input_dropout_prob=0.0
    )
    x = torch.randn(3, 9, 16)
    y = decoder(x)
    assert y.shape == (3, 9, 16)
    # Written out: each block is conv -> LayerNorm over channels -> GELU, plus its input.
    h = x.transpose(1, 2)
    for block in decoder.blocks:
        c = block.conv(h)[..., : h.shape[-1]]
        h = F.gelu(F.layer_norm(c.transpose(1, 2), (16,)).transpose(1, 2)) + h
    torch.testing.assert_close(y, decoder.proj(h.transpose(1, 2)))
    wide = ConvDecoder(
        16, decoder_dim=8, kernel=kernel, groups=4, num_layers=3, input_dropout_prob=0
    )
    assert wide(x).shape == (3, 9, 16)


def test_regression_loss_and_spread_against_numpy():
    prediction, target = torch.randn(6, 16), torch.randn(6, 16)
    want = ((prediction.double() - target.double()) ** 2).sum().item() / 4.0  # 1/sqrt(16)
    assert regression_loss(prediction, target).item() == pytest.approx(want, rel=1e-6)
    assert regression_loss(prediction, target, 0.5).item() == pytest.approx(want * 2, rel=1e-6)
    std = np.sqrt(prediction.double().numpy().var(0, ddof=1) + 1e-6).mean()
    assert spread(prediction).item() == pytest.approx(std, rel=1e-5)
    assert spread(torch.ones(8, 4)).item() == pytest.approx(1e-3, rel=1e-3)


def test_model_loss_against_a_slow_assembly_of_clones_masks_and_teacher():
    torch.manual_seed(0)
    cfg = tiny()
    d2v = _tiny_d2v(decoder_input_dropout=0.0)
    model = Data2Vec2Model(cfg, d2v).eval()
    wav = torch.randn(2, 8000)
    frames = 24  # (8000 - 400) // 320 + 1
    time_mask = torch.zeros(4, frames, dtype=torch.bool)
    time_mask[0, 2:7] = time_mask[1, 10:15] = time_mask[2, 0:5] = time_mask[3, 18:23] = True
    with torch.no_grad():
        out = model(wav, time_mask=time_mask)
        loss = regression_loss(out.prediction, out.target).item()
        x = model.frontend(wav).encoder_input
        target = teacher_targets(model.teacher.encoder, x, None, 2, True)
        slow = 0.0
        for row in range(4):  # clone m of utterance b is row 2b + m
            b = row // 2
            masked = x[b].clone()
            masked[time_mask[row]] = model.masker.mask_embedding
            context = model.encoder(masked[None])[-1]
            prediction = model.decoder(context)[0]
            for t in range(frames):
                if time_mask[row, t]:
                    slow += ((prediction[t] - target[b, t]) ** 2).sum().item() / math.sqrt(64)
    assert out.prediction.shape == (20, 64)
    assert loss == pytest.approx(slow, rel=1e-4)


def test_objective_steps_the_teacher_once_per_update_and_plans_the_anneal():
    torch.manual_seed(0)
    model = Data2Vec2Model(
        tiny(), _tiny_d2v(ema_decay=0.5, ema_end_decay=1.0, ema_anneal_end_step=4)
    )
    objective = data2vec2_objective(model.d2v, nominal_steps=8)
    objective.plan(lambda k: k / 16)  # twice the updates: the anneal ends at update 8, not 4

    class _Batch:
        wav = torch.randn(2, 8000)
        padding_mask = None

    generator = torch.Generator().manual_seed(0)
    out = objective.step(model, _Batch(), 4, generator)
    assert model.teacher.updates == 4
    assert out.means["ema_decay"] == pytest.approx(0.75)  # 0.5 + (1 - 0.5) * 4 / 8
    assert out.sample_size > 0 and out.loss.item() > 0


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="data2vec2.average_top_k_layers"):
        Data2Vec2Model(tiny(), _tiny_d2v(average_top_k_layers=3))
    with pytest.raises(ConfigError, match="data2vec2.ema_end_decay"):
        Data2Vec2Config(ema_decay=0.9, ema_end_decay=0.8)
