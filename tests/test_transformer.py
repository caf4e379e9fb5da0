"""Context network: SDPA attention, positional conv, post-/pre-LN blocks (against HF), padding,
LayerDrop."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from helpers import right_padding
from transformers import Wav2Vec2Config
from transformers.models.wav2vec2.modeling_wav2vec2 import (
    Wav2Vec2Encoder,
    Wav2Vec2EncoderStableLayerNorm,
)

from w2vkit.model.config import TransformerConfig
from w2vkit.model.dropout import keep_mask
from w2vkit.model.transformer import (
    ConvPositionalEmbedding,
    SelfAttention,
    TransformerEncoder,
    _explicit_attention,
)

SMALL = TransformerConfig(
    num_layers=2,
    model_dim=32,
    ffn_dim=64,
    num_heads=4,
    pos_conv_kernel=16,
    pos_conv_groups=4,
    dropout_prob=0.0,
    attention_dropout_prob=0.0,
    layerdrop_prob=0.0,
)


def _encoder(seed: int = 0, **changes) -> TransformerEncoder:
    torch.manual_seed(seed)
    encoder = TransformerEncoder(replace(SMALL, **changes)).eval()
    with torch.no_grad():  # non-trivial LayerNorm affines so a swapped norm cannot hide
        for name, p in encoder.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.5, 0.5)
    return encoder


def _attention_reference(
    attention: SelfAttention, x: torch.Tensor, padding: torch.Tensor | None, keep=None, scale=1.0
) -> torch.Tensor:
    """Softmax attention written out; `keep` (B, H, T, T) drops weights, the rest scaled."""
    batch, frames, dim = x.shape

    def heads(t):
        return t.view(batch, frames, 4, dim // 4).transpose(1, 2)  # (B, H, T, d)

    q, k, v = heads(attention.q_proj(x)), heads(attention.k_proj(x)), heads(attention.v_proj(x))
    scores = q @ k.transpose(-1, -2) / math.sqrt(dim // 4)  # (B, H, T, T)
    if padding is not None:
        scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
    weights = scores.softmax(-1)
    if keep is not None:
        weights = weights * keep * scale
    y = (weights @ v).transpose(1, 2).reshape(batch, frames, dim)
    return attention.out_proj(y)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_attention_equals_explicit_softmax_reference(padded, training):
    # eval: SDPA; training with attention dropout on CPU: the written-out path (here dropping
    # weights with a probability that rounds to 0: nothing dropped).
    torch.manual_seed(0)
    attention = SelfAttention(32, 4, dropout_prob=0.1).train(training)
    if training:
        attention.dropout_prob = 1e-6
    x = torch.randn(3, 11, 32)
    padding = right_padding([11, 7, 2], 11) if padded else None
    reference = _attention_reference(attention, x, padding)
    torch.testing.assert_close(attention(x, padding), reference, rtol=0, atol=1e-5)


def test_written_out_attention_under_bf16_autocast_is_sdpa_in_fp32():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 11, 8).to(torch.bfloat16) for _ in range(3))
    reference = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    out = _explicit_attention(q, k, v, None, dropout_prob=0.0)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, rtol=0, atol=8e-3)  # bf16 output rounding


def test_attention_dropout_on_cpu_drops_weights_with_the_cpu_dropout_mask():
    torch.manual_seed(0)
    attention = SelfAttention(32, 4, dropout_prob=0.2).train()
    x = torch.randn(3, 11, 32)
    padding = right_padding([11, 7, 2], 11)
    torch.manual_seed(5)
    out = attention(x, padding)
    torch.manual_seed(5)
    keep, scale = keep_mask(torch.Size([3, 4, 11, 11]), 0.2)
    reference = _attention_reference(attention, x, padding, keep, scale)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    attention = SelfAttention(32, 4, dropout_prob=0.5)
    x = torch.randn(2, 9, 32)
    assert not torch.equal(attention.train()(x, None), attention.eval()(x, None))
    assert torch.equal(attention.eval()(x, None), attention(x, None))


@pytest.mark.parametrize("kernel", [16, 15])
def test_positional_conv_keeps_length_and_normalises_weight_per_tap(kernel):
    torch.manual_seed(0)
    pos = ConvPositionalEmbedding(32, kernel, groups=4)
    x = torch.randn(2, 13, 32)
    assert pos(x).shape == (2, 13, 32)
    g = pos.conv.parametrizations.weight.original0
    v = pos.conv.parametrizations.weight.original1
    assert g.shape == (1, 1, kernel) and v.shape == (32, 8, kernel)
    # weight_norm(dim=2): w[:, :, k] = g[k] * v[:, :, k] / ||v[:, :, k]||
    with torch.no_grad():
        g.mul_(torch.linspace(0.5, 2.0, kernel))
    torch.testing.assert_close(pos.conv.weight, g * v / v.norm(dim=(0, 1), keepdim=True))
    # Same padding: frame t sees inputs t - k//2 .. t + (k-1)//2 (SamePad drops one for even k).
    y_ref = torch.nn.functional.conv1d(
        x.transpose(1, 2), pos.conv.weight, pos.conv.bias, padding=kernel // 2, groups=4
    )[..., :13]
    torch.testing.assert_close(pos(x), torch.nn.functional.gelu(y_ref).transpose(1, 2))


def test_positional_conv_init_std():
    torch.manual_seed(0)
    pos = ConvPositionalEmbedding(256, 32, groups=16)
    v = pos.conv.parametrizations.weight.original1
    assert v.std().item() == pytest.approx(math.sqrt(4.0 / (32 * 256)), rel=0.05)
    assert torch.equal(pos.conv.bias, torch.zeros(256))


def _hf_encoder(ours: TransformerEncoder) -> torch.nn.Module:
    cfg = ours.cfg
    hf_cfg = Wav2Vec2Config(
        hidden_size=cfg.model_dim,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.ffn_dim,
        num_conv_pos_embeddings=cfg.pos_conv_kernel,
        num_conv_pos_embedding_groups=cfg.pos_conv_groups,
        do_stable_layer_norm=cfg.layer_norm_first,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
    )
    hf_cfg._attn_implementation = "eager"
    hf = (Wav2Vec2EncoderStableLayerNorm if cfg.layer_norm_first else Wav2Vec2Encoder)(
        hf_cfg
    ).eval()
    rename = [
        ("pos_conv.", "pos_conv_embed."),
        ("attention_norm.", "layer_norm."),
        ("fc1.", "feed_forward.intermediate_dense."),
        ("fc2.", "feed_forward.output_dense."),
        ("ffn_norm.", "final_layer_norm."),
        ("norm.", "layer_norm."),
    ]
    state = {}
    for key, value in ours.state_dict().items():
        for old, new in rename:
            if key.startswith(old) or f".{old}" in key:
                key = key.replace(old, new, 1)
                break
        state[key] = value
    hf.load_state_dict(state, strict=True)
    return hf


@pytest.mark.parametrize(("layer_norm_first", "kernel"), [(False, 16), (True, 16), (False, 15)])
def test_encoder_equals_hf_encoder(layer_norm_first, kernel):
    ours = _encoder(layer_norm_first=layer_norm_first, pos_conv_kernel=kernel)
    hf = _hf_encoder(ours)
    x = torch.randn(3, 13, 32)
    padding = right_padding([13, 9, 4], 13)
    states = ours(x, padding)
    assert len(states) == 3
    want = hf(x.clone(), attention_mask=~padding).last_hidden_state
    valid = ~padding
    torch.testing.assert_close(states[-1][valid], want[valid], rtol=0, atol=1e-5)


def test_encoder_ignores_values_at_padded_frames():
    encoder = _encoder(layer_norm_first=True)
    x = torch.randn(2, 12, 32)
    padding = right_padding([12, 7], 12)
    noisy = x.clone()
    noisy[1, 7:] = 1e3 * torch.randn(5, 32)
    for a, b in zip(encoder(x, padding), encoder(noisy, padding), strict=True):
        torch.testing.assert_close(a[~padding], b[~padding], rtol=0, atol=1e-5)


def test_seq_len_multiple_padding_does_not_change_the_output():
    x = torch.randn(2, 13, 32)  # odd T: a padded batch is padded to 14 internally
    padding = right_padding([13, 9], 13)
    valid = ~padding
    for a, b in zip(
        _encoder(required_seq_len_multiple=2)(x, padding),
        _encoder(required_seq_len_multiple=1)(x, padding),
        strict=True,
    ):
        assert a.shape == (2, 13, 32)
        torch.testing.assert_close(a[valid], b[valid], rtol=0, atol=1e-5)


def _attention_masks(monkeypatch) -> list:
    """The `attn_mask` of every SDPA call the encoder makes from now on."""
    masks: list = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        masks.append(kwargs.get("attn_mask"))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return masks


def test_training_on_cpu_takes_sdpa_without_attention_dropout(monkeypatch):
    # Only dropped attention weights are written out (SDPA's CPU kernels cannot drop them).
    masks = _attention_masks(monkeypatch)
    for prob, calls in ((0.0, 2), (0.1, 0)):
        masks.clear()
        _encoder(attention_dropout_prob=prob).train()(torch.randn(2, 13, 32))
        assert len(masks) == calls, prob


def test_an_unpadded_batch_of_odd_length_attends_without_a_mask(monkeypatch):
    # No mask keeps SDPA eligible for the flash kernel (and skips the mask arithmetic on CPU).
    encoder = _encoder(required_seq_len_multiple=2)
    masks = _attention_masks(monkeypatch)
    states = encoder(torch.randn(2, 13, 32))
    assert [s.shape for s in states] == [(2, 13, 32)] * 3
    assert masks == [None, None]
    encoder(torch.randn(2, 13, 32), right_padding([13, 9], 13))
    assert [tuple(m.shape) for m in masks[2:]] == [(2, 1, 1, 14)] * 2


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_num_layers_returns_a_prefix_and_final_norm_only_when_all_run(layer_norm_first):
    encoder = _encoder(layer_norm_first=layer_norm_first, num_layers=3)
    x = torch.randn(2, 10, 32)
    full = encoder(x)
    assert len(full) == 4
    for k in range(4):
        part = encoder(x, num_layers=k)
        assert len(part) == k + 1
        for a, b in zip(part[:-1], full, strict=False):  # a prefix
            assert torch.equal(a, b)
        if k < 3 or not layer_norm_first:
            torch.testing.assert_close(part[-1], full[k], rtol=0, atol=0)
    if layer_norm_first:  # the final LayerNorm turns the raw layer-3 output into the last state
        raw = encoder.layers[2](full[2], None)
        torch.testing.assert_close(full[3], encoder.norm(raw), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"num_layers must be in \[0, 3\], got 4"):
        encoder(x, num_layers=4)


def test_layerdrop_draws_from_the_generator_only_in_training():
    encoder = _encoder(num_layers=4, layerdrop_prob=0.5).train()
    x = torch.randn(1, 6, 32)
    counts = []
    for seed in range(100):
        a = encoder(x, generator=torch.Generator().manual_seed(seed))
        b = encoder(x, generator=torch.Generator().manual_seed(seed))
        assert len(a) == len(b) and all(torch.equal(s, t) for s, t in zip(a, b, strict=True))
        counts.append(len(a) - 1)
    kept = sum(counts) / (100 * 4)
    assert 0.4 < kept < 0.6, kept  # Binomial(400, 0.5): std 0.025
    assert len(set(counts)) > 2
    assert len(encoder.eval()(x)) == 5  # eval never drops


def test_activation_checkpointing_gives_the_same_output_and_gradients_with_dropout():
    def grads(checkpointing: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        cfg = dict(dropout_prob=0.1, attention_dropout_prob=0.1, activation_dropout_prob=0.1)
        encoder = _encoder(activation_checkpointing=checkpointing, **cfg).train()
        x = torch.randn(2, 13, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
        torch.manual_seed(2)  # the same dropout masks in both runs, replayed by the recomputation
        out = encoder(x, right_padding([13, 9], 13))[-1]
        out.pow(2).sum().backward()
        assert x.grad is not None
        return out.detach(), [x.grad, *(p.grad for p in encoder.parameters())]

    want_out, want = grads(False)
    got_out, got = grads(True)
    assert torch.equal(got_out, want_out)
    assert len(got) == len(want) and all(g is not None for g in got)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)


def test_activation_checkpointing_keeps_fewer_tensors_for_the_backward():
    # Count the tensors autograd saves: without checkpointing every layer's activations, with it
    # only each layer's input.
    def saved(checkpointing: bool) -> int:
        encoder = _encoder(activation_checkpointing=checkpointing, num_layers=4).train()
        count = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal count
            count += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            encoder(torch.randn(2, 13, 32, requires_grad=True))
        return count

    assert saved(True) < saved(False) / 2


def test_fused_qkv_projection_equals_three_projections_and_keeps_the_state_dict_keys():
    torch.manual_seed(0)
    attention = SelfAttention(32, 4, 0.0).eval()
    assert sorted(attention.state_dict()) == sorted(
        f"{m}_proj.{p}" for m in ("q", "k", "v", "out") for p in ("weight", "bias")
    )
    x = torch.randn(2, 7, 32)
    padding = right_padding([7, 5], 7)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(2, 7, 4, 8).transpose(1, 2)

    q, k, v = (heads(getattr(attention, f"{m}_proj")(x)) for m in "qkv")
    y = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=~padding[:, None, None, :]
    )
    want = attention.out_proj(y.transpose(1, 2).reshape(2, 7, 32))
    torch.testing.assert_close(attention(x, padding), want, rtol=1e-6, atol=1e-6)
