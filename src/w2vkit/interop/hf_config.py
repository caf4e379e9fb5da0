"""HF transformers `Wav2Vec2Config` (config.json) <-> w2vkit's `ModelConfig`, both ways.

Translation covers every field both sides have (table `FIELDS` plus the conv stack, the extractor
norm and the code width). w2vkit fields HF has no place for are of two kinds:
- `HF_CANNOT`: options that change what the model computes in a way HF cannot (cross-sample or
  codebook negatives, non-static span lengths, ...). A non-default value is a ConfigError naming it.
- everything else (gradient scale into the extractor, Gumbel temperature schedule, fairseq mask
  sampling details, sequence padding multiple): training-procedure settings HF leaves to the
  training script. They travel in config.json as `w2vkit_extras` (HF keeps unknown keys and ignores
  them), so w2vkit -> HF -> w2vkit gives back the same config. A config.json without them (a model
  trained with transformers) gets w2vkit's defaults for these.
Sizes are checked against both bounds before anything is built (a crafted config.json must neither
allocate terabytes nor build a zero-width layer).
"""

from __future__ import annotations

from typing import Any

from w2vkit.config import ConfigError, flatten, from_dict, nest, to_dict
from w2vkit.model.config import ModelConfig

FIELDS: dict[str, str] = {
    "transformer.num_layers": "num_hidden_layers",
    "transformer.model_dim": "hidden_size",
    "transformer.ffn_dim": "intermediate_size",
    "transformer.num_heads": "num_attention_heads",
    "transformer.layer_norm_first": "do_stable_layer_norm",
    "transformer.dropout_prob": "hidden_dropout",
    "transformer.attention_dropout_prob": "attention_dropout",
    "transformer.activation_dropout_prob": "activation_dropout",
    "transformer.layerdrop_prob": "layerdrop",
    "transformer.pos_conv_kernel": "num_conv_pos_embeddings",
    "transformer.pos_conv_groups": "num_conv_pos_embedding_groups",
    "feature_extractor.conv_bias": "conv_bias",
    "input_dropout_prob": "feat_proj_dropout",
    "features_dropout_prob": "feat_quantizer_dropout",
    "masking.time_prob": "mask_time_prob",
    "masking.time_span_frames": "mask_time_length",
    "masking.time_min_spans": "mask_time_min_masks",
    "masking.channel_prob": "mask_feature_prob",
    "masking.channel_span_channels": "mask_feature_length",
    "quantizer.num_groups": "num_codevector_groups",
    "quantizer.num_entries": "num_codevectors_per_group",
    "final_dim": "proj_codevector_dim",
    "logit_temperature": "contrastive_logits_temperature",
    "num_negatives": "num_negatives",
}
# Wav2Vec2Config defaults (transformers 4.x-5.x) of the translated fields; older config.json files
# lack some of them (e.g. mask_time_min_masks).
HF_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_dropout": 0.1, "activation_dropout": 0.1,
    "attention_dropout": 0.1, "feat_proj_dropout": 0.0, "feat_quantizer_dropout": 0.0,
    "layerdrop": 0.1, "feat_extract_norm": "group", "conv_dim": [512] * 7,
    "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_bias": False,
    "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16,
    "do_stable_layer_norm": False, "mask_time_prob": 0.05, "mask_time_length": 10,
    "mask_time_min_masks": 2, "mask_feature_prob": 0.0, "mask_feature_length": 10,
    "num_codevectors_per_group": 320, "num_codevector_groups": 2,
    "contrastive_logits_temperature": 0.1, "num_negatives": 100, "codevector_dim": 256,
    "proj_codevector_dim": 256,
}  # fmt: skip
# HF fields w2vkit implements with one value only (w2vkit's model and loss defaults).
FIXED: dict[str, Any] = {
    "model_type": "wav2vec2",
    "hidden_act": "gelu",
    "feat_extract_activation": "gelu",
    "layer_norm_eps": 1e-5,
    "apply_spec_augment": True,
    "mask_feature_min_masks": 0,
    "diversity_loss_weight": 0.1,
    "add_adapter": False,
    "adapter_attn_dim": None,
}
# w2vkit fields whose non-default values HF cannot compute; the value HF does compute.
HF_CANNOT: dict[str, Any] = {
    "num_cross_sample_negatives": 0,
    "num_codebook_negatives": 0,
    "quantizer.quantize_targets": True,
    "masking.time_span_selection": "static",
    "masking.channel_span_selection": "static",
    "masking.time_no_overlap": False,
    "masking.channel_no_overlap": False,
    "masking.mask_dropout_prob": 0.0,
    "masking.channel_before": False,
}
SPECIAL = {"feature_extractor.conv_layers", "feature_extractor.norm_mode", "quantizer.dim"}
# Upper bounds on config.json sizes, far above any released wav2vec 2.0 (XLS-R 2B: 48 layers of
# 1920, FFN 7680): a crafted config.json must not make a loader allocate terabytes or spend
# minutes building layers before the weights are even looked at.
HF_MAXIMA: dict[str, int] = {
    "hidden_size": 16384, "num_hidden_layers": 256, "num_attention_heads": 1024,
    "intermediate_size": 65536, "num_conv_pos_embeddings": 4096,
    "num_conv_pos_embedding_groups": 16384, "num_codevectors_per_group": 65536,
    "num_codevector_groups": 1024, "codevector_dim": 65536, "proj_codevector_dim": 65536,
    "num_negatives": 100000, "mask_time_length": 1 << 20, "mask_feature_length": 65536,
    "mask_time_min_masks": 1 << 20, "vocab_size": 1 << 20,
}  # fmt: skip
# Sizes that may be 0 (everything else in HF_MAXIMA is at least 1: a zero-width layer is damage).
HF_MAY_BE_ZERO = {"mask_time_min_masks", "mask_time_length", "mask_feature_length"}
HF_LIST_MAXIMA: dict[str, int] = {"conv_dim": 16384, "conv_kernel": 4096, "conv_stride": 4096}
MAX_CONV_LAYERS = 64
_NORM = {"group_norm": "group", "layer_norm": "layer"}


def hf_config_from_w2vkit(
    cfg: ModelConfig, *, architecture: str = "Wav2Vec2ForPreTraining"
) -> dict:
    """ModelConfig -> the dict `Wav2Vec2Config(**d)` takes (config.json)."""
    if cfg.feature_extractor.kind != "conv":
        raise ConfigError(
            f"model.feature_extractor.kind={cfg.feature_extractor.kind!r} cannot be exported to HF "
            "transformers, whose Wav2Vec2 has only the waveform conv encoder; keep the w2vkit "
            "checkpoint (w2vkit convert SRC DST --to w2vkit, w2vkit.load_model)"
        )
    flat = flatten(to_dict(cfg))
    # A bare encoder's outputs depend on none of these; its directory still carries them in
    # w2vkit_extras, so the round trip stays exact.
    with_heads = architecture == "Wav2Vec2ForPreTraining"
    for dotted, value in HF_CANNOT.items():
        if with_heads and flat[dotted] != value:
            raise ConfigError(
                f"model.{dotted}={flat[dotted]!r} cannot be represented in HF transformers "
                f"(Wav2Vec2ForPreTraining only computes {value!r})"
            )
    if with_heads and cfg.masking.time_prob == 0 and cfg.masking.channel_prob == 0:
        raise ConfigError(
            "model.masking.time_prob=0 cannot be represented in HF transformers: with "
            "mask_time_prob = mask_feature_prob = 0 it drops the mask embedding"
        )
    conv = cfg.feature_extractor.conv_layers
    out = {
        "architectures": [architecture],
        **FIXED,
        **{hf: flat[w] for w, hf in FIELDS.items()},
        "feat_extract_norm": _NORM[cfg.feature_extractor.norm_mode],
        "conv_dim": [c for c, _, _ in conv],
        "conv_kernel": [k for _, k, _ in conv],
        "conv_stride": [s for _, _, s in conv],
        "codevector_dim": cfg.code_dim,
    }
    out["w2vkit_extras"] = {k: v for k, v in flat.items() if k not in FIELDS and k not in SPECIAL}
    out["w2vkit_extras"]["quantizer.dim"] = cfg.quantizer.dim
    return out


HINTS = {
    "diversity_loss_weight": "; set loss.diversity_weight in the pretraining config instead)",
    # `convert --to hf` writes HubertModel / Data2VecAudioModel for transformers users only.
    "model_type": "; read the w2vkit or fairseq checkpoint this directory was converted from)",
}
"""What to do instead, for the FIXED fields that have an alternative."""


def config_from_hf(hf: dict, *, source: str = "config.json") -> ModelConfig:
    """HF config.json dict -> ModelConfig; HF options w2vkit cannot represent are ConfigErrors."""
    for name, value in FIXED.items():  # absent = HF's default, which is the value w2vkit implements
        found = hf.get(name, value)
        if name == "mask_feature_min_masks" and not hf.get("mask_feature_prob"):
            continue  # unused without feature masking
        if found != value:
            raise ConfigError(
                f"{source}: {name}={found!r} cannot be represented in w2vkit (it implements "
                f"only {value!r}" + HINTS.get(name, ")")
            )
    _check_sizes(hf, source)
    hf = {**HF_DEFAULTS, **hf}  # a missing field means HF's default, as in Wav2Vec2Config
    extras = hf.get("w2vkit_extras") or {}
    clash = sorted(
        set(extras)
        & (set(FIELDS) | {"feature_extractor.conv_layers", "feature_extractor.norm_mode"})
    )
    if clash:
        raise ConfigError(
            f"{source}: w2vkit_extras.{clash[0]} duplicates an HF field; edit the HF field"
        )
    if hf["feat_extract_norm"] not in _NORM.values():
        raise ConfigError(
            f"{source}: feat_extract_norm={hf['feat_extract_norm']!r} is not 'group' or 'layer'"
        )
    if not len(hf["conv_dim"]) == len(hf["conv_kernel"]) == len(hf["conv_stride"]):
        raise ConfigError(f"{source}: conv_dim, conv_kernel and conv_stride differ in length")
    flat = {w: hf[h] for w, h in FIELDS.items()}
    flat["feature_extractor.norm_mode"] = {v: k for k, v in _NORM.items()}[hf["feat_extract_norm"]]
    flat["feature_extractor.conv_layers"] = [
        list(t) for t in zip(hf["conv_dim"], hf["conv_kernel"], hf["conv_stride"], strict=True)
    ]
    code_dim = hf["codevector_dim"]
    flat["quantizer.dim"] = 0 if code_dim == hf["proj_codevector_dim"] else code_dim
    flat.update(extras)
    try:
        cfg = from_dict(ModelConfig, nest(flat), where="model")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err
    if cfg.code_dim != code_dim:
        raise ConfigError(
            f"{source}: w2vkit_extras.quantizer.dim={cfg.quantizer.dim} disagrees with "
            f"codevector_dim={code_dim}"
        )
    return cfg


def _check_sizes(hf: dict, source: str) -> None:
    """Every size field a number within `HF_MAXIMA` / `HF_LIST_MAXIMA` and at least 1 (0 where
    `HF_MAY_BE_ZERO`), before anything is built."""
    for name, limit in HF_MAXIMA.items():
        value = hf.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {name}={value!r:.60} is not a number")
        if value > limit:
            raise ConfigError(f"{source}: {name}={value:g} exceeds {limit}, the most w2vkit loads")
        least = 0 if name in HF_MAY_BE_ZERO else 1
        if value < least:
            raise ConfigError(f"{source}: {name}={value:g} must be at least {least}")
    for name, limit in HF_LIST_MAXIMA.items():
        values = hf.get(name)
        if values is None:
            continue
        if not isinstance(values, list) or not 1 <= len(values) <= MAX_CONV_LAYERS:
            raise ConfigError(
                f"{source}: {name} must be a list of 1 to {MAX_CONV_LAYERS} numbers, got "
                f"{values!r:.60}"
            )
        for i, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value > limit:
                raise ConfigError(
                    f"{source}: {name}[{i}]={value!r:.40} is not a number up to {limit}"
                )
            if value < 1:
                raise ConfigError(f"{source}: {name}[{i}]={value:g} must be at least 1")
