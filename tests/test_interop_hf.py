"""Parity with HF transformers' wav2vec 2.0 (random-init models built from configs, no downloads).

The same weights go through `w2vkit.interop.hf` (the production converter) into
`Wav2Vec2ForPreTraining.from_pretrained`; both models then see the same audio in fp32 eval mode.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from w2vkit.config import ConfigError
from w2vkit.interop import ModelRecord, read_model, save_w2vkit
from w2vkit.interop import hf as hf_interop
from w2vkit.model.config import base, large, tiny
from w2vkit.model.negatives import sample_negatives
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.pretrain.wav2vec2 import contrastive_loss

transformers = pytest.importorskip("transformers")
HFPreTraining, HFModel = transformers.Wav2Vec2ForPreTraining, transformers.Wav2Vec2Model


def _narrow(cfg, *, conv: int, dim: int, ffn: int, final: int):
    """The preset's structure (norms, layer count, kernels, strides, pos conv) at small widths."""
    fe = dataclasses.replace(
        cfg.feature_extractor,
        conv_layers=[(conv, k, s) for _, k, s in cfg.feature_extractor.conv_layers],
    )
    tr = dataclasses.replace(cfg.transformer, model_dim=dim, ffn_dim=ffn)
    return dataclasses.replace(cfg, feature_extractor=fe, transformer=tr, final_dim=final)


def _variant(norm_mode: str, layer_norm_first: bool):
    cfg = tiny()
    return dataclasses.replace(
        cfg,
        feature_extractor=dataclasses.replace(
            cfg.feature_extractor, norm_mode=norm_mode, conv_bias=norm_mode == "layer_norm"
        ),
        transformer=dataclasses.replace(cfg.transformer, layer_norm_first=layer_norm_first),
    )


CONFIGS = {
    "tiny-group-postln": _variant("group_norm", False),
    "tiny-layer-preln": _variant("layer_norm", True),
    "tiny-group-preln": _variant("group_norm", True),
    "tiny-layer-postln": _variant("layer_norm", False),
    "base-shaped": _narrow(
        base(), conv=32, dim=48, ffn=96, final=16
    ),  # 12 layers, group norm, post-LN
    "large-shaped": _narrow(
        large(), conv=32, dim=64, ffn=128, final=32
    ),  # 24 layers, layer norm, pre-LN
}


def _random_model(cfg, seed: int = 0) -> Wav2Vec2Model:
    """Random weights everywhere (norm gains and biases too), so no parameter is a no-op."""
    torch.manual_seed(seed)
    model = Wav2Vec2Model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _to_hf(model: Wav2Vec2Model, tmp_path, **kwargs):
    hf_interop.save_hf(ModelRecord(model.cfg, model.state_dict()), tmp_path / "hf", **kwargs)
    hf_model, info = HFPreTraining.from_pretrained(tmp_path / "hf", output_loading_info=True)
    return hf_model.eval(), info


def _audio(padded: bool):
    gen = torch.Generator().manual_seed(1)
    wav = torch.randn(2, 16000, generator=gen)
    if not padded:
        return wav, None
    padding_mask = torch.zeros(2, 16000, dtype=torch.bool)
    padding_mask[1, 11000:] = True
    return wav.masked_fill(padding_mask, 0.0), padding_mask


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_hidden_state_matches_hf(name, padded, tmp_path):
    model = _random_model(CONFIGS[name])
    hf_model, info = _to_hf(model, tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    wav, padding_mask = _audio(padded)
    with torch.no_grad():
        ours = model.extract_features(wav, padding_mask)
        theirs = hf_model.wav2vec2(
            wav,
            attention_mask=None if padding_mask is None else (~padding_mask).long(),
            output_hidden_states=True,
        )
    num_layers = model.cfg.transformer.num_layers
    assert len(ours.hidden_states) == len(theirs.hidden_states) == num_layers + 1
    # HF's hidden_states[-1] is taken before the pre-LN final LayerNorm; last_hidden_state after it.
    expected = list(theirs.hidden_states[:-1]) + [theirs.last_hidden_state]
    for layer, (a, b) in enumerate(zip(ours.hidden_states, expected, strict=True)):
        valid = slice(None) if padding_mask is None else ~ours.padding_mask
        torch.testing.assert_close(
            a[valid], b[valid], atol=1e-4, rtol=0, msg=f"{name} state {layer}"
        )
    torch.testing.assert_close(ours.features, theirs.extract_features, atol=1e-4, rtol=0)


def _hf_negatives(time_mask: torch.Tensor, negative_indices: torch.Tensor) -> torch.Tensor:
    """Our (N, K) masked-ordinal indices -> HF's (B, T, K) absolute indices into the B*T frames."""
    batch, frames = time_mask.shape
    flat_of_ordinal = time_mask.flatten().nonzero()[:, 0]  # (N,) ordinal -> b*T + t
    out = torch.zeros(batch * frames, negative_indices.shape[1], dtype=torch.long)
    out[flat_of_ordinal] = flat_of_ordinal[negative_indices]
    return out.view(batch, frames, -1)


def _mask_and_negatives(cfg, frames: int, padding_frames: torch.Tensor | None):
    gen = torch.Generator().manual_seed(3)
    time_mask = torch.rand(2, frames, generator=gen) < 0.5
    if padding_frames is not None:
        time_mask &= ~padding_frames
    negatives = sample_negatives(time_mask.sum(1), cfg.num_negatives, 0, generator=gen)
    return time_mask, negatives


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("name", ["tiny-group-postln", "tiny-layer-preln", "large-shaped"])
def test_pretraining_logits_and_loss_match_hf(name, padded, tmp_path):
    """Eval mode (argmax codes on both sides), same time mask and distractors."""
    model = _random_model(CONFIGS[name])
    hf_model, _ = _to_hf(model, tmp_path)
    wav, padding_mask = _audio(padded)
    attention_mask = None if padding_mask is None else (~padding_mask).long()
    with torch.no_grad():
        frame_pad = model.extract_features(wav, padding_mask).padding_mask
        time_mask, negatives = _mask_and_negatives(model.cfg, 49, frame_pad)
        ours = model(
            wav, padding_mask, temperature=2.0, time_mask=time_mask, negative_indices=negatives
        )
        theirs = hf_model(
            wav,
            attention_mask=attention_mask,
            mask_time_indices=time_mask,
            sampled_negative_indices=_hf_negatives(time_mask, negatives),
        )
        # HF does not return its logits; rebuild them from its outputs with its own function.
        q, hid = theirs.projected_quantized_states, theirs.projected_states  # (B, T, F)
        hf_idx = _hf_negatives(time_mask, negatives)
        neg = (
            q.reshape(-1, q.shape[-1])[hf_idx.view(-1)].view(*hf_idx.shape, -1).permute(2, 0, 1, 3)
        )
        logits = HFPreTraining.compute_contrastive_logits(
            q[None], neg, hid, model.cfg.logit_temperature
        )
        logits[1:][(q == neg).all(-1)] = float("-inf")
        hf_logits = logits.permute(1, 2, 0)[time_mask]  # (1+K, B, T) -> (N, 1+K), row-major (b, t)
    torch.testing.assert_close(ours.logits, hf_logits, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(
        contrastive_loss(ours.logits), theirs.contrastive_loss, atol=1e-3, rtol=1e-5
    )


def test_diversity_term_matches_hf_soft_perplexity(tmp_path):
    """HF uses the soft (prob) perplexity over masked frames only in train mode; with every dropout
    and LayerDrop off that equals our prob_perplexity, and its diversity_loss (GV-ppl)/GV * N."""
    model = _random_model(CONFIGS["tiny-group-postln"])  # tiny: all dropouts 0
    hf_model, _ = _to_hf(model, tmp_path)
    hf_model.train()
    wav, _ = _audio(False)
    with torch.no_grad():
        time_mask, negatives = _mask_and_negatives(model.cfg, 49, None)
        ours = model(wav, temperature=2.0, time_mask=time_mask, negative_indices=negatives)
        theirs = hf_model(
            wav,
            mask_time_indices=time_mask,
            sampled_negative_indices=_hf_negatives(time_mask, negatives),
        )
    torch.testing.assert_close(
        ours.prob_perplexity, theirs.codevector_perplexity, atol=1e-5, rtol=1e-6
    )
    num_vars = ours.num_vars
    ours_div = (num_vars - ours.prob_perplexity) / num_vars * time_mask.sum()
    torch.testing.assert_close(ours_div, theirs.diversity_loss, atol=1e-4, rtol=1e-6)


def _exotic(cfg):
    """Non-default values in the w2vkit-only fields HF carries; C == D (identity projection)."""
    fe = dataclasses.replace(
        cfg.feature_extractor, grad_scale=0.03, conv_layers=[(64, 10, 5)] + [(64, 3, 2)] * 6
    )
    masking = dataclasses.replace(
        cfg.masking, require_same_masks=False, time_min_space_frames=3, time_span_other=1.5
    )
    quant = dataclasses.replace(
        cfg.quantizer, dim=32, temperature_start=1.5, temperature_end=0.2, temperature_decay=0.9
    )
    tr = dataclasses.replace(cfg.transformer, required_seq_len_multiple=4)
    return dataclasses.replace(
        cfg, feature_extractor=fe, masking=masking, quantizer=quant, transformer=tr
    )


@pytest.mark.parametrize(
    "cfg",
    [CONFIGS["tiny-group-postln"], CONFIGS["large-shaped"], _exotic(tiny())],
    ids=["tiny", "large-shaped", "extras-and-identity-projection"],
)
def test_round_trip_w2vkit_hf_w2vkit_is_bit_exact(cfg, tmp_path):
    model = _random_model(cfg)
    hf_interop.save_hf(ModelRecord(cfg, model.state_dict()), tmp_path / "hf")
    record = read_model(tmp_path / "hf")
    back_cfg, back_state = record.cfg, record.state_dict
    assert back_cfg == cfg
    state = model.state_dict()
    assert set(back_state) == set(state)
    for key, value in state.items():
        assert torch.equal(back_state[key], value), key


def test_bare_wav2vec2model_directory(tmp_path):
    """HF reports the pretraining heads as unexpected when a Wav2Vec2Model loads a ForPreTraining
    directory (as for any base model from a head checkpoint); --hf-class model writes none."""
    model = _random_model(CONFIGS["tiny-layer-preln"])
    hf_interop.save_hf(ModelRecord(model.cfg, model.state_dict()), tmp_path / "full")
    _, info = HFModel.from_pretrained(tmp_path / "full", output_loading_info=True)
    assert not info["missing_keys"]
    assert all(
        k.startswith(("quantizer.", "project_q.", "project_hid.")) for k in info["unexpected_keys"]
    )
    hf_interop.save_hf(ModelRecord(model.cfg, model.state_dict()), tmp_path / "bare", heads=False)
    hf_bare, info = HFModel.from_pretrained(tmp_path / "bare", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    record = read_model(tmp_path / "bare")
    cfg, state = record.cfg, record.state_dict
    fresh = Wav2Vec2Model(cfg)
    result = fresh.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert sorted(result.missing_keys) == sorted(
        k
        for k in fresh.state_dict()
        if k.startswith(("quantizer.", "target_proj.", "context_proj."))
    )
    wav, _ = _audio(False)
    with torch.no_grad():
        torch.testing.assert_close(
            fresh.eval().extract_features(wav).context,
            hf_bare.eval()(wav).last_hidden_state,
            atol=1e-4,
            rtol=0,
        )


def test_hf_native_checkpoint_with_legacy_weight_norm_bin(tmp_path):
    """A model made by transformers itself (no w2vkit extras), as pytorch_model.bin with the old
    weight_g / weight_v names, converts and matches HF."""
    hf_cfg = transformers.Wav2Vec2Config(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=[32] * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        codevector_dim=16,
        proj_codevector_dim=16,
        num_codevectors_per_group=8,
        feat_extract_norm="layer",
        conv_bias=True,
        do_stable_layer_norm=True,
    )
    torch.manual_seed(0)
    hf_model = HFPreTraining(hf_cfg).eval()
    hf_model.save_pretrained(tmp_path / "hfnative")
    (tmp_path / "hfnative" / "model.safetensors").unlink()
    legacy = {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v
        for k, v in hf_model.state_dict().items()
    }
    torch.save(legacy, tmp_path / "hfnative" / "pytorch_model.bin")
    record = read_model(tmp_path / "hfnative")
    cfg, state = record.cfg, record.state_dict
    assert cfg.feature_extractor.norm_mode == "layer_norm" and cfg.transformer.layer_norm_first
    model = Wav2Vec2Model(cfg)
    model.load_state_dict(state)
    wav, _ = _audio(False)
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval().extract_features(wav).context,
            hf_model.wav2vec2(wav).last_hidden_state,
            atol=1e-4,
            rtol=0,
        )


def test_non_identity_projection_with_equal_widths_is_an_error(tmp_path):
    """HF always has feature_projection; w2vkit has none when C == D, so it must be the identity."""
    model = _random_model(_exotic(tiny()))
    hf_interop.save_hf(ModelRecord(model.cfg, model.state_dict()), tmp_path / "hf")
    hf_model = HFPreTraining.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        hf_model.wav2vec2.feature_projection.projection.weight.mul_(2.0)
    hf_model.save_pretrained(tmp_path / "hf")
    with pytest.raises(ConfigError, match="feature_projection.projection is not the identity"):
        read_model(tmp_path / "hf")


def test_preprocessor_config_matches_the_model(tmp_path):
    for name, attention in [("tiny-group-postln", False), ("tiny-layer-preln", True)]:
        model = _random_model(CONFIGS[name])
        hf_interop.save_hf(
            ModelRecord(model.cfg, model.state_dict(), normalize=None), tmp_path / name
        )
        extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(tmp_path / name)
        assert extractor.sampling_rate == 16000 and extractor.feature_size == 1
        assert extractor.return_attention_mask is attention and extractor.do_normalize is attention
    hf_interop.save_hf(
        ModelRecord(model.cfg, model.state_dict(), normalize=False), tmp_path / "explicit"
    )
    assert (
        json.loads((tmp_path / "explicit" / "preprocessor_config.json").read_text())["do_normalize"]
        is False
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_cross_sample_negatives", 5),
        ("num_codebook_negatives", 2),
        ("masking.time_span_selection", "poisson"),
        ("masking.channel_before", True),
        ("masking.mask_dropout_prob", 0.1),
        ("quantizer.quantize_targets", False),
    ],
)
def test_fields_hf_cannot_represent_are_errors_naming_them(field, value):
    cfg = tiny()
    if "." in field:
        section, leaf = field.split(".")
        cfg = dataclasses.replace(
            cfg, **{section: dataclasses.replace(getattr(cfg, section), **{leaf: value})}
        )
    else:
        cfg = dataclasses.replace(cfg, **{field: value})
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        hf_interop.hf_config_from_w2vkit(cfg)


@pytest.mark.parametrize(
    "field, value",
    [
        ("hidden_act", "relu"),
        ("feat_extract_activation", "relu"),
        ("add_adapter", True),
        ("layer_norm_eps", 1e-6),
        ("diversity_loss_weight", 0.2),
        ("apply_spec_augment", False),
    ],
)
def test_hf_fields_w2vkit_cannot_represent_are_errors_naming_them(field, value):
    hf = hf_interop.hf_config_from_w2vkit(tiny())
    hf[field] = value
    with pytest.raises(ConfigError, match=field):
        hf_interop.config_from_hf(hf)


def test_hub_style_config_without_newer_fields_uses_hf_defaults():
    """An older hub config.json (facebook/wav2vec2-base style): no mask_time_min_masks, legacy
    mask_* keys HF no longer reads, CTC-head fields; it translates to the fairseq BASE model."""
    hub = {
        "architectures": ["Wav2Vec2ForPreTraining"], "model_type": "wav2vec2",
        "activation_dropout": 0.0, "apply_spec_augment": True, "attention_dropout": 0.1,
        "codevector_dim": 256, "contrastive_logits_temperature": 0.1, "conv_bias": False,
        "conv_dim": [512] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
        "conv_stride": [5, 2, 2, 2, 2, 2, 2], "diversity_loss_weight": 0.1,
        "do_stable_layer_norm": False, "feat_extract_activation": "gelu",
        "feat_extract_norm": "group", "feat_proj_dropout": 0.1, "feat_quantizer_dropout": 0.0,
        "final_dropout": 0.0, "gradient_checkpointing": True, "hidden_act": "gelu",
        "hidden_dropout": 0.1, "hidden_size": 768, "intermediate_size": 3072,
        "layer_norm_eps": 1e-05, "layerdrop": 0.05, "mask_channel_prob": 0.0,
        "mask_time_selection": "static", "mask_time_prob": 0.05, "num_attention_heads": 12,
        "num_codevector_groups": 2, "num_codevectors_per_group": 320,
        "num_conv_pos_embedding_groups": 16, "num_conv_pos_embeddings": 128,
        "num_hidden_layers": 12, "num_negatives": 100, "proj_codevector_dim": 256,
        "vocab_size": 32,
    }  # fmt: skip
    cfg = hf_interop.config_from_hf(hub)
    expected = base()
    expected = dataclasses.replace(
        expected, masking=dataclasses.replace(expected.masking, time_prob=0.05),
        features_dropout_prob=0.0,
        transformer=dataclasses.replace(expected.transformer, attention_dropout_prob=0.1),
    )  # fmt: skip
    assert cfg == expected


def test_hf_model_that_never_masks_has_no_mask_embedding(tmp_path):
    """mask_time_prob = mask_feature_prob = 0: HF keeps no masked_spec_embed. It reads (the trainer
    initialises the embedding), but cannot be written back: HF would drop it."""
    hf_cfg = transformers.Wav2Vec2Config(
        hidden_size=48, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        conv_dim=[32] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        mask_time_prob=0.0,
    )  # fmt: skip
    HFModel(hf_cfg).save_pretrained(tmp_path / "m")
    record = read_model(tmp_path / "m")
    cfg, state = record.cfg, record.state_dict
    assert cfg.masking.time_prob == 0 and "masker.mask_embedding" not in state
    with pytest.raises(ConfigError, match="time_prob"):
        hf_interop.hf_config_from_w2vkit(cfg)


def test_encoder_only_hf_model_round_trips_through_w2vkit_and_back(tmp_path):
    """An HF Wav2Vec2ForCTC (no pretraining heads, never masks): convert -> w2vkit file -> read
    again -> export as a bare HF encoder, with identical encoder weights throughout."""
    hf_cfg = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
        conv_dim=[16] * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
        vocab_size=10, mask_time_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.Wav2Vec2ForCTC(hf_cfg).save_pretrained(tmp_path / "ctc")
    source = hf_interop.load_hf(tmp_path / "ctc")
    save_w2vkit(source, tmp_path / "ctc.pt")
    again = read_model(tmp_path / "ctc.pt")  # used to fail: missing quantizer.codevectors ...
    assert again.state_dict.keys() == source.state_dict.keys()
    assert all(torch.equal(again.state_dict[k], v) for k, v in source.state_dict.items())
    # A bare encoder exports even though the settings of the missing heads are not HF's.
    hf_interop.save_hf(again, tmp_path / "enc", heads=False)
    assert hf_interop.load_hf(tmp_path / "enc").state_dict.keys() == source.state_dict.keys()
    with pytest.raises((ConfigError, ValueError), match="no pretraining heads"):  # with heads: no
        hf_interop.save_hf(again, tmp_path / "full", heads=True)


def test_bare_encoder_export_ignores_head_only_settings(tmp_path):
    cfg = dataclasses.replace(tiny(), num_cross_sample_negatives=3)
    model = _random_model(cfg)
    pretrained = ModelRecord(cfg, model.state_dict(), None)
    with pytest.raises(ConfigError, match="num_cross_sample_negatives"):
        hf_interop.save_hf(pretrained, tmp_path / "full", heads=True)
    hf_interop.save_hf(pretrained, tmp_path / "enc", heads=False)
    back = hf_interop.load_hf(tmp_path / "enc")
    assert back.cfg.num_cross_sample_negatives == 3  # carried in w2vkit_extras
