"""Conv feature extractor: output lengths, frame padding, norm modes (and what they do to padded
batches), gradient scaling."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from w2vkit.model.config import BASE_CONV_LAYERS, FeatureExtractorConfig, tiny
from w2vkit.model.conv_matmul import conv_as_matmuls
from w2vkit.model.feature_extractor import ConvFeatureExtractor, frame_padding_mask, output_lengths
from w2vkit.model.negatives import sample_negatives
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.pretrain.wav2vec2 import pretraining_loss

TINY_CONV = tiny().feature_extractor.conv_layers


@pytest.mark.parametrize(("num_samples", "num_frames"), [(250000, 781), (32000, 99), (16000, 49)])
def test_output_lengths_reference_values(num_samples, num_frames):
    # BASE strides give 320 samples per frame, a 400-sample receptive field.
    assert output_lengths(torch.tensor([num_samples]), BASE_CONV_LAYERS).item() == num_frames


def test_output_lengths_below_receptive_field_is_zero():
    lengths = output_lengths(torch.tensor([0, 100, 399, 400, 719, 720]), BASE_CONV_LAYERS)
    assert lengths.tolist() == [0, 0, 0, 1, 1, 2]


def test_output_lengths_equal_actual_conv_output():
    torch.manual_seed(0)
    extractor = ConvFeatureExtractor(
        FeatureExtractorConfig(conv_layers=[(4, 10, 5)] + [(4, 3, 2)] * 4 + [(4, 2, 2)] * 2)
    )
    for num_samples in torch.randint(400, 6000, (25,)).tolist():
        with torch.no_grad():
            actual = extractor(torch.randn(1, num_samples)).shape[-1]
        assert (
            output_lengths(torch.tensor([num_samples]), extractor.cfg.conv_layers).item() == actual
        ), num_samples


def test_frame_padding_mask_marks_frames_past_each_length():
    padding = torch.zeros(3, 16000, dtype=torch.bool)
    padding[1, 10000:] = True
    padding[2, 720:] = True
    mask = frame_padding_mask(padding, TINY_CONV, num_frames=49)
    expected_lengths = [49, output_lengths(torch.tensor(10000), TINY_CONV).item(), 2]
    assert expected_lengths[1] == 31  # 10000 -> 1999 -> 999 -> 499 -> 249 -> 124 -> 62 -> 31
    for row, length in enumerate(expected_lengths):
        assert not mask[row, :length].any() and mask[row, length:].all()


@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_mode_normalises_first_layer_over_time_only(channels_last):
    torch.manual_seed(0)
    extractor = ConvFeatureExtractor(
        FeatureExtractorConfig(conv_layers=TINY_CONV, norm_mode="group_norm")
    )
    norms = [layer.norm for layer in extractor.layers]
    assert isinstance(norms[0], torch.nn.GroupNorm) and norms[0].num_groups == 64
    assert all(norm is None for norm in norms[1:])
    assert all(layer.conv.bias is None for layer in extractor.layers)
    # Reference: per (utterance, channel) standardisation over time, then GELU.
    wav = torch.randn(2, 3000)
    conv = extractor.layers[0].conv(wav[:, None])  # (B, C, T)
    mean, var = conv.mean(-1, keepdim=True), conv.var(-1, unbiased=False, keepdim=True)
    reference = F.gelu((conv - mean) / torch.sqrt(var + 1e-5))
    if channels_last:  # the CPU path: (B, S, 1) in, (B, T, C) out
        out = extractor.layers[0](wav[:, :, None], channels_last=True).transpose(1, 2)
    else:
        out = extractor.layers[0](wav[:, None], channels_last=False)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_layer_norm_mode_normalises_every_frame_of_every_layer(channels_last):
    torch.manual_seed(0)
    cfg = FeatureExtractorConfig(conv_layers=TINY_CONV, norm_mode="layer_norm", conv_bias=True)
    extractor = ConvFeatureExtractor(cfg)
    assert all(isinstance(layer.norm, torch.nn.LayerNorm) for layer in extractor.layers)
    assert all(layer.conv.bias is not None for layer in extractor.layers)
    x = torch.randn(2, 64, 30)
    layer = extractor.layers[3]
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.uniform_(-0.5, 0.5)
    conv = layer.conv(x)  # (B, C, T)
    mean, var = conv.mean(1, keepdim=True), conv.var(1, unbiased=False, keepdim=True)
    normed = (conv - mean) / torch.sqrt(var + 1e-5) * layer.norm.weight[:, None] + layer.norm.bias[
        :, None
    ]
    if channels_last:
        out = layer(x.transpose(1, 2).contiguous(), channels_last=True).transpose(1, 2)
    else:
        out = layer(x, channels_last=False)
    torch.testing.assert_close(out, F.gelu(normed), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("norm_mode", ["group_norm", "layer_norm"])
def test_norms_compute_in_fp32_under_bf16(norm_mode, channels_last):
    torch.manual_seed(0)
    cfg = FeatureExtractorConfig(conv_layers=TINY_CONV, norm_mode=norm_mode)
    norm = ConvFeatureExtractor(cfg).layers[0].norm.to(torch.bfloat16)
    # A large offset with a small spread: bf16 statistics would lose the spread entirely.
    x = (300.0 + torch.randn(2, 64, 50)).to(torch.bfloat16)
    if channels_last:
        y = norm.channels_last(x.transpose(1, 2).contiguous()).transpose(1, 2)
    else:
        y = norm(x)
    assert y.dtype == torch.bfloat16
    reference = (
        F.group_norm(x.float(), 64)
        if norm_mode == "group_norm"
        else F.layer_norm(x.float().transpose(1, 2), (64,)).transpose(1, 2)
    )
    torch.testing.assert_close(y.float(), reference, atol=0.02, rtol=0.02)


@pytest.mark.parametrize("norm_mode", ["group_norm", "layer_norm"])
def test_norms_receive_fp32_input_under_bf16_autocast(norm_mode, monkeypatch):
    """The upcast itself: torch's CPU bf16 norms accumulate in fp32 inside, so their outputs barely
    move without it (0.007 in the test above); only the dtype the norm receives tells."""
    received = []

    def recording(name):
        norm = getattr(F, name)

        def record(x, *args, **kwargs):
            received.append((name, x.dtype))
            return norm(x, *args, **kwargs)

        return record

    for name in ("group_norm", "layer_norm"):
        monkeypatch.setattr(F, name, recording(name))
    extractor = ConvFeatureExtractor(
        FeatureExtractorConfig(conv_layers=TINY_CONV, norm_mode=norm_mode)
    )
    wav = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = extractor(wav)  # (B, C, T)
    assert features.dtype == torch.bfloat16  # the convolutions do run in bf16
    num_norms = 1 if norm_mode == "group_norm" else len(TINY_CONV)  # group norm: layer 0 only
    assert received == [(norm_mode, torch.float32)] * num_norms


def _padded_invariance_error(norm_mode: str) -> tuple[float, float]:
    """Max |difference| at the valid frames of a shorter utterance, padded in a batch vs alone:
    (over the conv `features`, over every hidden state)."""
    cfg = tiny()
    torch.manual_seed(0)
    extractor = replace(cfg.feature_extractor, norm_mode=norm_mode)
    model = Wav2Vec2Model(replace(cfg, feature_extractor=extractor)).eval()
    g = torch.Generator().manual_seed(1)
    long, short = torch.randn(1, 16000, generator=g), torch.randn(1, 10000, generator=g)
    batch = torch.cat([long, torch.nn.functional.pad(short, (0, 6000))])
    padding = torch.zeros(2, 16000, dtype=torch.bool)
    padding[1, 10000:] = True
    with torch.no_grad():
        padded, alone = model.extract_features(batch, padding), model.extract_features(short)
    frames = alone.features.shape[1]
    assert frames == 31 and padded.padding_mask[1].tolist() == [False] * 31 + [True] * 18
    features = (padded.features[1, :frames] - alone.features[0]).abs().max().item()
    hidden = max(
        (p[1, :frames] - a[0]).abs().max().item()
        for p, a in zip(padded.hidden_states, alone.hidden_states, strict=True)
    )
    return features, hidden


def test_layer_norm_extractor_is_invariant_to_padding():
    features, hidden = _padded_invariance_error("layer_norm")
    assert features < 1e-5 and hidden < 1e-5


def test_group_norm_extractor_is_not_invariant_to_padding():
    # GroupNorm normalises each channel over the whole (padded) length, so padding moves every
    # valid frame; docs/model.md records the measured size (fairseq issue 3227, HF docs).
    features, hidden = _padded_invariance_error("group_norm")
    assert features > 0.05 and hidden > 0.05


def _extractor_grads(grad_scale: float, state: dict | None) -> tuple[dict, dict, Wav2Vec2Model]:
    """Gradients of the pretraining loss with feature `grad_scale`, weights from `state`."""
    cfg = tiny()
    cfg = replace(cfg, feature_extractor=replace(cfg.feature_extractor, grad_scale=grad_scale))
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg).eval()  # eval: no Gumbel noise, the graph is deterministic
    if state is not None:
        model.load_state_dict(state)
    wav = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    time_mask = torch.zeros(2, 24, dtype=torch.bool)
    time_mask[:, 3:13] = True
    negatives = sample_negatives(time_mask.sum(1), 5, generator=torch.Generator().manual_seed(2))
    out = model(wav, temperature=1.0, time_mask=time_mask, negative_indices=negatives)
    pretraining_loss(out).loss.backward()
    extractor, rest = {}, {}
    for name, p in model.named_parameters():
        (extractor if name.startswith("feature_extractor.") else rest)[name] = p.grad
    return extractor, rest, model


def test_grad_scale_multiplies_the_extractor_gradient_exactly():
    unscaled, rest_unscaled, model = _extractor_grads(1.0, None)
    state = model.state_dict()
    # A power of two scales every float exactly, so the scaled gradient is bit-equal.
    scaled, rest_scaled, _ = _extractor_grads(0.25, state)
    for name, grad in unscaled.items():
        assert grad is not None and grad.abs().max() > 0, name
        assert torch.equal(scaled[name], grad * 0.25), name
    for name, grad in rest_unscaled.items():
        assert torch.equal(rest_scaled[name], grad), name
    tenth, _, _ = _extractor_grads(0.1, state)  # the BASE value: equal up to rounding
    for name, grad in unscaled.items():
        torch.testing.assert_close(
            tenth[name], grad * 0.1, rtol=0, atol=1e-5 * float(grad.abs().max())
        )


def test_grad_scale_zero_freezes_the_extractor():
    unscaled, rest_unscaled, model = _extractor_grads(1.0, None)
    frozen, rest_frozen, _ = _extractor_grads(0.0, model.state_dict())
    assert all(grad is None for grad in frozen.values())
    # The rest of the model still trains, with the same gradients (the scale only acts backward).
    for name, grad in rest_unscaled.items():
        torch.testing.assert_close(rest_frozen[name], grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    ("kernel", "stride"), [(10, 5), (3, 2), (2, 2), (1, 1), (4, 1), (5, 3), (7, 3), (2, 3)]
)
@pytest.mark.parametrize("bias", [False, True])
def test_conv_as_matmuls_is_conv1d(kernel, stride, bias):
    # Whole groups of `stride` taps, taps left over, a stride longer than the kernel.
    g = torch.Generator().manual_seed(kernel * 10 + stride)
    weight = torch.randn(6, 4, kernel, generator=g, requires_grad=True)
    bias_t = torch.randn(6, generator=g, requires_grad=True) if bias else None
    for frames in (kernel, kernel + stride - 1, 37, 38):
        x = torch.randn(2, 4, frames, generator=g, requires_grad=True)  # (B, C, T)
        reference = F.conv1d(x, weight, bias_t, stride)  # (B, O, T')
        out = conv_as_matmuls(x.transpose(1, 2), weight, bias_t, stride).transpose(1, 2)
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
        grad = torch.randn(reference.shape, generator=g)
        inputs = [x, weight] + ([bias_t] if bias_t is not None else [])
        expected = torch.autograd.grad(reference, inputs, grad)
        actual = torch.autograd.grad(out, inputs, grad)
        for e, a in zip(expected, actual, strict=True):
            torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("kernel", "stride"), [(3, 2), (5, 3), (2, 3)])
def test_conv_as_matmuls_backward_passes_gradcheck(kernel, stride):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 11, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, kernel, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: conv_as_matmuls(*a, stride), (x, weight, bias))
    # Only one input wanting a gradient (a waveform in, a frozen kernel).
    assert torch.autograd.gradcheck(lambda w: conv_as_matmuls(x.detach(), w, None, stride), weight)
    assert torch.autograd.gradcheck(lambda i: conv_as_matmuls(i, weight.detach(), None, stride), x)


def test_conv_as_matmuls_under_autocast_runs_in_bf16_as_conv1d():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40, 8, generator=g)
    weight = torch.randn(6, 8, 3, generator=g, requires_grad=True)
    bias = torch.randn(6, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = F.conv1d(x.transpose(1, 2), weight, bias, 2).transpose(1, 2)
        out = conv_as_matmuls(x, weight, bias, 2)
    assert out.dtype == reference.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference, atol=0.1, rtol=0.02)
    out.float().sum().backward()
    assert weight.grad is not None and weight.grad.dtype == torch.float32


def test_conv_as_matmuls_without_a_complete_window_fails_as_conv1d():
    weight = torch.randn(6, 4, 3)
    with pytest.raises(RuntimeError) as expected:
        F.conv1d(torch.randn(1, 4, 2), weight, None, 2)
    with pytest.raises(RuntimeError) as actual:
        conv_as_matmuls(torch.randn(1, 2, 4), weight, None, 2)
    assert str(actual.value) == str(expected.value)


@pytest.mark.parametrize("norm_mode", ["group_norm", "layer_norm"])
def test_cpu_matmul_path_matches_the_conv_path(norm_mode):
    """On CPU the extractor runs `channels_last=True`; the conv path (kept on GPU) is the reference,
    outputs and gradients, with BASE's layer shapes at a quarter of the width."""
    torch.manual_seed(0)
    layers = [(128, 10, 5)] + [(128, 3, 2)] * 4 + [(128, 2, 2)] * 2
    cfg = FeatureExtractorConfig(
        conv_layers=layers, norm_mode=norm_mode, conv_bias=norm_mode == "layer_norm"
    )
    extractor = ConvFeatureExtractor(cfg)
    wav = torch.randn(2, 6001, generator=torch.Generator().manual_seed(1))
    x = wav[:, None]
    for layer in extractor.layers:
        x = layer(x, channels_last=False)
    reference, out = x, extractor(wav)  # (B, C, T) both
    assert out.shape == reference.shape == (2, 128, 18)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    params = list(extractor.parameters())
    expected = torch.autograd.grad(reference, params, grad)
    actual = torch.autograd.grad(out, params, grad)
    for e, a in zip(expected, actual, strict=True):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)


def test_cpu_matmul_path_under_bf16_autocast_matches_the_conv_path():
    torch.manual_seed(0)
    cfg = FeatureExtractorConfig(conv_layers=TINY_CONV, norm_mode="layer_norm", conv_bias=True)
    extractor = ConvFeatureExtractor(cfg)
    wav = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = wav[:, None]
        for layer in extractor.layers:
            x = layer(x, channels_last=False)
        reference, out = x, extractor(wav)
    assert out.dtype == reference.dtype == torch.bfloat16
    # Both round every layer's output to bf16 (8 bits of mantissa), in different orders.
    torch.testing.assert_close(out.float(), reference.float(), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("norm_mode", ["group_norm", "layer_norm"])
def test_checkpointed_conv_stack_gives_the_same_output_and_gradients_and_saves_less(norm_mode):
    cfg = replace(
        FeatureExtractorConfig(),
        norm_mode=norm_mode,
        conv_layers=[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2,
    )

    def run(checkpointing: bool) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        torch.manual_seed(0)
        extractor = ConvFeatureExtractor(cfg, checkpointing=checkpointing).train()
        wav = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1), requires_grad=True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t
        ):
            out = extractor(wav)
        out.pow(2).mean().backward()
        assert wav.grad is not None
        return out.detach(), [wav.grad, *(p.grad for p in extractor.parameters())], sum(saved)

    plain_out, plain_grads, plain_saved = run(False)
    out, grads, saved = run(True)
    assert torch.equal(out, plain_out)
    for got, want in zip(grads, plain_grads, strict=True):
        assert torch.equal(got, want)
    assert saved <= 8000 * 2 * 4  # the waveform only
    assert saved < plain_saved / 10


def test_the_model_checkpoints_the_conv_stack_with_the_transformer():
    for on in (False, True):
        cfg = replace(tiny(), transformer=replace(tiny().transformer, activation_checkpointing=on))
        assert Wav2Vec2Model(cfg).feature_extractor.checkpointing is on
