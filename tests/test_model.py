"""The assembled pretraining model: parameter counts (formula and HF), forward contract, padding,
gradients, randomness from the generator only, determinism, and overfitting one batch."""

from __future__ import annotations

import importlib
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import tiny_model as _model
from helpers import wav as _wav
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

from w2vkit.model.config import ModelConfig, preset, tiny
from w2vkit.model.feature_extractor import output_lengths
from w2vkit.model.negatives import sample_negatives
from w2vkit.model.wav2vec2 import FeatureOutput, PretrainOutput, Wav2Vec2Model
from w2vkit.pretrain.wav2vec2 import pretraining_loss


def expected_num_params(cfg: ModelConfig) -> int:
    """Parameter count from the config alone, component by component."""
    fe, t, q = cfg.feature_extractor, cfg.transformer, cfg.quantizer
    total, in_channels = 0, 1
    for i, (channels, kernel, _) in enumerate(fe.conv_layers):
        total += in_channels * channels * kernel + (channels if fe.conv_bias else 0)
        # LayerNorm on every layer, or GroupNorm on the first only
        total += 2 * channels if fe.norm_mode == "layer_norm" or i == 0 else 0
        in_channels = channels
    c, d, f = cfg.conv_dim, t.model_dim, cfg.final_dim
    total += 2 * c  # feature_norm
    total += c * d + d if c != d else 0  # feature_projection
    total += d  # mask embedding
    k = t.pos_conv_kernel
    total += k + d * (d // t.pos_conv_groups) * k + d  # positional conv: weight-norm g, v, bias
    total += 2 * d  # encoder norm
    attention, norms = 4 * (d * d + d), 2 * 2 * d
    ffn = d * t.ffn_dim + t.ffn_dim + t.ffn_dim * d + d
    total += t.num_layers * (attention + norms + ffn)
    if q.quantize_targets:
        num_vars = q.num_groups * q.num_entries
        total += c * num_vars + num_vars  # weight_proj
        total += num_vars * (cfg.code_dim // q.num_groups)  # codevectors
        total += cfg.code_dim * f + f  # target_proj
    else:
        total += c * f + f
    return total + d * f + f  # context_proj


def _meta_model(cfg: ModelConfig) -> Wav2Vec2Model:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return Wav2Vec2Model(cfg)


@pytest.mark.parametrize(
    ("name", "count"),
    [("tiny", 155_760), ("base", 95_044_608), ("large", 317_390_592), ("large_paper", 317_380_864)],
)
def test_preset_parameter_counts(name, count):
    cfg = preset(name)
    assert expected_num_params(cfg) == count
    assert sum(p.numel() for p in _meta_model(cfg).parameters()) == count


def _hf_pretraining_model(name: str) -> Wav2Vec2ForPreTraining:
    cfg = preset(name)
    t, q = cfg.transformer, cfg.quantizer
    hf_cfg = Wav2Vec2Config(
        conv_dim=[c for c, _, _ in cfg.feature_extractor.conv_layers],
        conv_kernel=[k for _, k, _ in cfg.feature_extractor.conv_layers],
        conv_stride=[s for _, _, s in cfg.feature_extractor.conv_layers],
        conv_bias=cfg.feature_extractor.conv_bias,
        feat_extract_norm="layer" if cfg.feature_extractor.norm_mode == "layer_norm" else "group",
        do_stable_layer_norm=t.layer_norm_first,
        hidden_size=t.model_dim,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        intermediate_size=t.ffn_dim,
        num_conv_pos_embeddings=t.pos_conv_kernel,
        num_conv_pos_embedding_groups=t.pos_conv_groups,
        num_codevector_groups=q.num_groups,
        num_codevectors_per_group=q.num_entries,
        codevector_dim=cfg.code_dim,
        proj_codevector_dim=cfg.final_dim,
    )
    with torch.device("meta"):
        return Wav2Vec2ForPreTraining(hf_cfg)


@pytest.mark.parametrize(("name", "count"), [("base", 95_044_608), ("large", 317_390_592)])
def test_base_and_large_match_hf_wav2vec2_for_pretraining(name, count):
    ours, hf = _meta_model(preset(name)), _hf_pretraining_model(name)
    assert sum(p.numel() for p in hf.parameters()) == count
    # Not only the total: the same multiset of tensor shapes.
    shapes = [sorted(tuple(p.shape) for p in model.parameters()) for model in (ours, hf)]
    assert shapes[0] == shapes[1]


def test_base_parameter_names_and_shapes_follow_the_contract():
    shapes = {k: tuple(v.shape) for k, v in _meta_model(preset("base")).state_dict().items()}
    expected = {
        "feature_extractor.layers.0.conv.weight": (512, 1, 10),
        "feature_extractor.layers.0.norm.weight": (512,),
        "feature_extractor.layers.1.conv.weight": (512, 512, 3),
        "feature_extractor.layers.6.conv.weight": (512, 512, 2),
        "feature_norm.weight": (512,),
        "feature_projection.weight": (768, 512),
        "masker.mask_embedding": (768,),
        "encoder.pos_conv.conv.parametrizations.weight.original0": (1, 1, 128),
        "encoder.pos_conv.conv.parametrizations.weight.original1": (768, 48, 128),
        "encoder.pos_conv.conv.bias": (768,),
        "encoder.norm.weight": (768,),
        "encoder.layers.11.attention.q_proj.weight": (768, 768),
        "encoder.layers.11.attention.out_proj.bias": (768,),
        "encoder.layers.11.attention_norm.weight": (768,),
        "encoder.layers.11.fc1.weight": (3072, 768),
        "encoder.layers.11.fc2.weight": (768, 3072),
        "encoder.layers.11.ffn_norm.bias": (768,),
        "quantizer.weight_proj.weight": (640, 512),
        "quantizer.codevectors": (1, 640, 128),
        "target_proj.weight": (256, 256),
        "context_proj.weight": (256, 768),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    assert "feature_extractor.layers.1.norm.weight" not in shapes
    assert not any(k.endswith("conv.bias") and k.startswith("feature_extractor") for k in shapes)
    assert "encoder.layers.12.fc1.weight" not in shapes


def _tiny(**changes) -> ModelConfig:
    return replace(tiny(), **changes)


def test_forward_output_contract():
    model = _model().train()
    out = model(_wav(2, 16000), temperature=1.7, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, PretrainOutput)
    n = int(out.time_mask.sum())
    assert out.time_mask.shape == (2, 49) and out.time_mask.dtype == torch.bool
    assert out.logits.shape == (n, 1 + 10) and out.logits.dtype == torch.float32
    assert out.negative_indices.shape == (n, 10)
    assert out.frame_padding_mask is None and out.num_vars == 2 * 16 and out.temperature == 1.7
    assert 2 <= out.prob_perplexity.item() <= 32 and 1 <= out.code_perplexity.item() <= 32
    # The penalty is mean(z**2) of the conv output, before feature_norm (fairseq features_pen).
    conv = model.feature_extractor(_wav(2, 16000))
    assert out.features_penalty.item() == pytest.approx(conv.pow(2).mean().item(), rel=1e-5)


def test_injected_time_mask_and_negatives_are_used_as_is():
    model = _model().eval()
    wav = _wav(2, 16000)
    sampled = model(wav, temperature=1.0, generator=torch.Generator().manual_seed(0))
    time_mask = torch.zeros(2, 49, dtype=torch.bool)
    time_mask[0, 5:20] = time_mask[1, 30:45] = True
    negatives = sample_negatives(time_mask.sum(1), 10, generator=torch.Generator().manual_seed(9))
    out = model(wav, temperature=1.0, time_mask=time_mask, negative_indices=negatives)
    assert out.time_mask is time_mask and out.negative_indices is negatives
    assert out.logits.shape == (30, 11)
    # Feeding back the sampled mask and negatives reproduces the sampled run exactly.
    again = model(
        wav, temperature=1.0, time_mask=sampled.time_mask, negative_indices=sampled.negative_indices
    )
    assert torch.equal(again.logits, sampled.logits)


def test_forward_equals_an_explicit_composition_of_the_parts():
    # Figure 1 step by step, one masked frame at a time, in (b, t) order.
    model = _model().eval()
    wav = _wav(2, 16000)
    time_mask = torch.zeros(2, 49, dtype=torch.bool)
    time_mask[0, [3, 4, 5, 20]] = time_mask[1, [0, 7, 8, 9, 48]] = True
    negatives = sample_negatives(time_mask.sum(1), 10, generator=torch.Generator().manual_seed(1))
    out = model(wav, temperature=1.0, time_mask=time_mask, negative_indices=negatives)
    with torch.no_grad():
        # (B, T, C); C == D in tiny, so there is no feature projection.
        z = model.feature_norm(model.feature_extractor(wav).transpose(1, 2))
        x = z.clone()
        x[time_mask] = model.masker.mask_embedding  # whole frames replaced, no projection in tiny
        context = model.encoder(x)[-1]
        frames = time_mask.nonzero().tolist()
        c = torch.stack([model.context_proj(context[b, t]) for b, t in frames])
        y = torch.stack(
            [model.target_proj(model.quantizer(z[b, t][None], 1.0).quantized[0]) for b, t in frames]
        )
        for i in range(len(frames)):
            candidates = torch.cat([y[i][None], y[negatives[i]]])  # (1+K, F)
            expected = (
                torch.cosine_similarity(c[i][None], candidates, dim=-1)
                / model.cfg.logit_temperature
            )
            torch.testing.assert_close(out.logits[i], expected, rtol=0, atol=1e-4)


def test_bad_time_masks_are_rejected():
    model = _model().eval()
    wav, padding = _wav(2, 16000), torch.zeros(2, 16000, dtype=torch.bool)
    padding[1, 8000:] = True
    with pytest.raises(ValueError, match=r"time_mask must be a bool tensor of shape \(2, 49\)"):
        model(wav, temperature=1.0, time_mask=torch.zeros(2, 48, dtype=torch.bool))
    with pytest.raises(ValueError, match="time_mask masks padded frames"):
        model(wav, padding, temperature=1.0, time_mask=torch.ones(2, 49, dtype=torch.bool))
    no_mask = _model(_tiny(masking=replace(tiny().masking, time_prob=0.0)))
    with pytest.raises(ValueError, match="time_prob is 0"):
        no_mask(wav, temperature=1.0)


def test_padded_batch_masks_and_negatives_stay_in_valid_frames():
    model = _model(_tiny(num_cross_sample_negatives=4)).train()
    padding = torch.zeros(3, 16000, dtype=torch.bool)
    padding[1, 9000:] = padding[2, 5000:] = True
    out = model(
        _wav(3, 16000), padding, temperature=2.0, generator=torch.Generator().manual_seed(3)
    )
    lengths = output_lengths((~padding).sum(1), model.cfg.feature_extractor.conv_layers)
    assert torch.equal(out.frame_padding_mask, torch.arange(49)[None] >= lengths[:, None])
    assert not (out.time_mask & out.frame_padding_mask).any()
    b, t = out.time_mask.nonzero(as_tuple=True)  # (N,) frame of each masked target, (b, t) order
    idx = out.negative_indices
    assert idx.shape == (len(b), 14)
    assert not out.frame_padding_mask[b[idx], t[idx]].any(), "a negative fell in padding"
    assert (idx != torch.arange(len(b))[:, None]).all(), "a negative is its own positive"
    assert (b[idx[:, :10]] == b[:, None]).all(), "a within-utterance negative from elsewhere"
    # The feature penalty averages the valid frames only (fairseq averages padding too, fd-feature-penalty-padding).
    squared = model.feature_extractor(_wav(3, 16000)).pow(2).mean(1)  # (B, C, T) -> (B, T)
    valid = ~out.frame_padding_mask
    assert out.features_penalty.item() == pytest.approx(squared[valid].mean().item(), rel=1e-5)


def test_all_randomness_comes_from_the_generator():
    # tiny has dropout 0: masks, the three kinds of negatives and Gumbel noise are the only draws.
    model = _model(_tiny(num_cross_sample_negatives=2, num_codebook_negatives=2)).train()
    wav = _wav(2, 16000)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    python_state = random.getstate()
    a = model(wav, temperature=2.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), torch_state), "drew from torch's global generator"
    assert np.array_equal(np.random.get_state()[1], numpy_state), "drew from numpy's generator"
    assert random.getstate() == python_state
    b = model(wav, temperature=2.0, generator=torch.Generator().manual_seed(5))
    c = model(wav, temperature=2.0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.logits, b.logits) and torch.equal(a.negative_indices, b.negative_indices)
    assert not torch.equal(a.time_mask, c.time_mask)
    assert a.time_mask.device == a.negative_indices.device == wav.device
    # No numpy on the step's path (fairseq samples masks in numpy on the CPU).
    names = ["wav2vec2", "masking", "negatives", "quantizer", "transformer", "feature_extractor"]
    for name in names:
        namespace = vars(importlib.import_module(f"w2vkit.model.{name}")).values()
        assert not any(value is np or value is np.random for value in namespace), name


@pytest.mark.gpu
def test_masks_and_negatives_are_made_on_the_model_device():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = _model().cuda().train()
    wav = _wav(2, 16000).cuda()
    out = model(wav, temperature=2.0, generator=torch.Generator(device="cuda").manual_seed(0))
    assert out.time_mask.is_cuda and out.negative_indices.is_cuda and out.logits.is_cuda
    again = model(wav, temperature=2.0, generator=torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(out.logits, again.logits)


def test_extract_features_layers_and_shapes():
    model = _model(_tiny(transformer=replace(tiny().transformer, layer_norm_first=True))).eval()
    wav = _wav(2, 16000)
    full = model.extract_features(wav)
    assert isinstance(full, FeatureOutput) and len(full.hidden_states) == 3
    assert full.features.shape == (2, 49, 64) and full.context is full.hidden_states[-1]
    assert full.padding_mask is None
    one = model.extract_features(wav, layer=1)
    assert len(one.hidden_states) == 2
    # No final LayerNorm on a partial run.
    assert torch.equal(one.hidden_states[1], full.hidden_states[1])
    assert torch.equal(model.extract_features(wav, layer=2).context, full.context)


def test_input_dropout_feeds_the_encoder_and_features_dropout_only_the_quantizer():
    wav = _wav(1, 8000)

    def twice(model):  # prob_perplexity depends on the quantizer input only
        runs = [
            model(wav, temperature=2.0, generator=torch.Generator().manual_seed(0))
            for _ in range(2)
        ]
        contexts = [model.extract_features(wav).context for _ in range(2)]
        return torch.equal(*contexts), torch.equal(runs[0].prob_perplexity, runs[1].prob_perplexity)

    assert twice(_model(_tiny(input_dropout_prob=0.5)).train()) == (False, True)
    assert twice(_model(_tiny(features_dropout_prob=0.5)).train()) == (True, False)


def test_gradients_reach_every_trainable_parameter():
    cfg = _tiny(
        transformer=replace(tiny().transformer, model_dim=32, dropout_prob=0.1),
        num_cross_sample_negatives=2,
        num_codebook_negatives=2,
    )
    model = _model(cfg).train()
    assert model.feature_projection is not None  # conv_dim 64 != model_dim 32
    out = model(_wav(2, 16000), temperature=2.0, generator=torch.Generator().manual_seed(0))
    assert out.logits.shape[1] == 1 + 10 + 2 + 2
    pretraining_loss(out).loss.backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert missing == []


def test_continuous_targets_without_quantizer():
    cfg = _tiny(quantizer=replace(tiny().quantizer, quantize_targets=False))
    model = _model(cfg).train()
    assert model.quantizer is None and model.target_proj.in_features == 64
    out = model(_wav(2, 16000), temperature=2.0, generator=torch.Generator().manual_seed(0))
    assert out.prob_perplexity is None and out.code_perplexity is None and out.num_vars == 0
    terms = pretraining_loss(out)
    assert terms.diversity.item() == 0.0
    terms.loss.backward()
    assert model.target_proj.weight.grad.any()


def _train_losses(
    cfg: ModelConfig, steps: int, seed: int, generator_seed: int
) -> tuple[list, list]:
    """Losses and final gradients of `steps` Adam steps on one fixed batch."""
    model = _model(cfg, seed).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    wav, generator = _wav(2, 8000, seed=seed), torch.Generator().manual_seed(generator_seed)
    losses = []
    for _ in range(steps):
        terms = pretraining_loss(model(wav, temperature=2.0, generator=generator))
        optimizer.zero_grad()
        (terms.loss / terms.sample_size).backward()
        optimizer.step()
        losses.append(terms.loss.detach())
    return losses, [p.grad for p in model.parameters()]  # None for a layer LayerDrop skipped


def test_same_seed_same_losses_and_gradients_to_the_last_bit():
    t = replace(
        tiny().transformer,
        dropout_prob=0.1,
        attention_dropout_prob=0.1,
        activation_dropout_prob=0.1,
        layerdrop_prob=0.3,
    )
    cfg = _tiny(transformer=t, input_dropout_prob=0.1, features_dropout_prob=0.1)
    losses_a, grads_a = _train_losses(cfg, 3, seed=0, generator_seed=1)
    losses_b, grads_b = _train_losses(cfg, 3, seed=0, generator_seed=1)
    assert all(torch.equal(a, b) for a, b in zip(losses_a, losses_b, strict=True))
    assert [a is None for a in grads_a] == [b is None for b in grads_b]
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True) if a is not None)
    losses_c, _ = _train_losses(cfg, 1, seed=0, generator_seed=2)
    assert not torch.equal(losses_a[0], losses_c[0])


def test_tiny_model_overfits_one_fixed_batch():
    model = _model().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    wav = _wav(2, 8000)
    first = None
    for step in range(100):  # noqa: B007 (reported on failure)
        # Reseeding every step fixes the masks, negatives and Gumbel noise: one fixed batch.
        terms = pretraining_loss(
            model(wav, temperature=2.0, generator=torch.Generator().manual_seed(1))
        )
        per_frame = (
            terms.loss.item() / terms.sample_size,
            terms.contrastive.item() / terms.sample_size,
        )
        first = first or per_frame
        if per_frame[0] < first[0] / 2 and per_frame[1] < first[1] / 2:
            break
        optimizer.zero_grad()
        (terms.loss / terms.sample_size).backward()
        optimizer.step()
    assert per_frame[0] < first[0] / 2 and per_frame[1] < first[1] / 2, (step, first, per_frame)


def test_public_stages_compose_forward_with_the_same_random_draws():
    """forward = frontend -> features_dropout -> contextualize(mask=True) -> contrast, drawing
    dropout (global RNG) and masks, negatives, codes (generator) in the same order."""
    model = _model(_tiny(input_dropout_prob=0.2, features_dropout_prob=0.3)).train()
    wav = _wav(2, 16000)
    torch.manual_seed(5)
    whole = model(wav, temperature=2.0, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    generator = torch.Generator().manual_seed(0)
    front = model.frontend(wav)
    unmasked = model.features_dropout(front.features)
    encoded = model.contextualize(front, mask=True, generator=generator)
    staged = model.contrast(encoded, unmasked, temperature=2.0, generator=generator)
    assert torch.equal(whole.logits, staged.logits)
    assert torch.equal(whole.time_mask, encoded.time_mask)
    assert front.features.shape == (2, 49, 64) and front.encoder_input.shape == (2, 49, 64)


def test_encode_masks_only_when_asked():
    model = _model().eval()
    wav = _wav(1, 16000)
    plain = model.encode(wav, mask=False)
    assert plain.time_mask is None
    assert torch.equal(plain.context, model.extract_features(wav).context)
    time_mask = torch.zeros(1, 49, dtype=torch.bool)
    time_mask[0, 10:20] = True
    masked = model.encode(wav, mask=True, time_mask=time_mask)
    assert masked.time_mask is time_mask
    # The masked frames enter the encoder as the mask embedding: the context changes.
    assert not torch.equal(masked.context, plain.context)
    with pytest.raises(ValueError, match="time_mask given with mask=False"):
        model.encode(wav, mask=False, time_mask=time_mask)
    with pytest.raises(ValueError, match="pretraining needs masked frames"):
        model.contrast(plain, plain.frontend.features, temperature=2.0)
