"""HF transformers `Wav2Vec2ForPreTraining` / `Wav2Vec2Model` directories <-> w2vkit, both ways.

Config translation covers every field both sides have (table `FIELDS` plus the conv stack, the
extractor norm and the code width). w2vkit fields HF has no place for are of two kinds:
- `HF_CANNOT`: options that change what the model computes in a way HF cannot (cross-sample or
  codebook negatives, non-static span lengths, ...). A non-default value is a ConfigError naming it.
- everything else (gradient scale into the extractor, Gumbel temperature schedule, fairseq mask
  sampling details, sequence padding multiple): training-procedure settings HF leaves to the
  training script. They travel in config.json as `w2vkit_extras` (HF keeps unknown keys and ignores
  them), so w2vkit -> HF -> w2vkit gives back the same config. A config.json without them (a model
  trained with transformers) gets w2vkit's defaults for these.
Reading never loads a pickle: safetensors where present, else `pytorch_model.bin` through safe_load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from w2vkit.config import ConfigError, flatten, from_dict, nest, to_dict
from w2vkit.finetune.vocab import BLANK, WORD_SEPARATOR, Vocabulary
from w2vkit.interop.keymap import KeyMap
from w2vkit.interop.native import (
    PRETRAINING_HEADS,
    Pretrained,
    check_state_dict,
    encoder_only_prefixes,
)
from w2vkit.interop.safe_load import CheckpointError, load_torch_file
from w2vkit.model.config import ModelConfig

if TYPE_CHECKING:  # finetune.model imports interop: a runtime import here would be circular
    from w2vkit.finetune.model import FineTuned

# w2vkit dotted field -> HF Wav2Vec2Config field, values copied as they are.
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
HF_LIST_MAXIMA: dict[str, int] = {"conv_dim": 16384, "conv_kernel": 4096, "conv_stride": 4096}
MAX_CONV_LAYERS = 64
_NORM = {"group_norm": "group", "layer_norm": "layer"}

# HF names are those of `Wav2Vec2Model`; `Wav2Vec2ForPreTraining` puts them under `wav2vec2.`.
KEYS = KeyMap([
    ("feature_extractor.conv_layers.{i}.conv.{p}", "feature_extractor.layers.{i}.conv.{p}"),
    ("feature_extractor.conv_layers.{i}.layer_norm.{p}", "feature_extractor.layers.{i}.norm.{p}"),
    ("feature_projection.layer_norm.{p}", "feature_norm.{p}"),
    ("feature_projection.projection.{p}", "feature_projection.{p}"),
    ("masked_spec_embed", "masker.mask_embedding"),
    # weight norm: original0 = g (1, 1, K), original1 = v (D, D/groups, K)
    ("encoder.pos_conv_embed.conv.parametrizations.weight.original{i}",
     "encoder.pos_conv.conv.parametrizations.weight.original{i}"),
    ("encoder.pos_conv_embed.conv.bias", "encoder.pos_conv.conv.bias"),
    ("encoder.layer_norm.{p}", "encoder.norm.{p}"),
    ("encoder.layers.{i}.attention.{qkv}_proj.{p}", "encoder.layers.{i}.attention.{qkv}_proj.{p}"),
    ("encoder.layers.{i}.layer_norm.{p}", "encoder.layers.{i}.attention_norm.{p}"),
    ("encoder.layers.{i}.feed_forward.intermediate_dense.{p}", "encoder.layers.{i}.fc1.{p}"),
    ("encoder.layers.{i}.feed_forward.output_dense.{p}", "encoder.layers.{i}.fc2.{p}"),
    ("encoder.layers.{i}.final_layer_norm.{p}", "encoder.layers.{i}.ffn_norm.{p}"),
    # pretraining heads (Wav2Vec2ForPreTraining only, no prefix)
    ("quantizer.codevectors", "quantizer.codevectors"),
    ("quantizer.weight_proj.{p}", "quantizer.weight_proj.{p}"),
    ("project_q.{p}", "target_proj.{p}"),
    ("project_hid.{p}", "context_proj.{p}"),
])  # fmt: skip
_HF_HEADS = ("quantizer.", "project_q.", "project_hid.")
# Older HF checkpoints (torch.nn.utils.weight_norm) store the pos-conv weight norm as g / v.
_LEGACY_WEIGHT_NORM = {
    ".conv.weight_g": ".conv.parametrizations.weight.original0",
    ".conv.weight_v": ".conv.parametrizations.weight.original1",
}


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


def config_from_hf(hf: dict, *, source: str = "config.json") -> ModelConfig:
    """HF config.json dict -> ModelConfig; HF options w2vkit cannot represent are ConfigErrors."""
    for name, value in FIXED.items():  # absent = HF's default, which is the value w2vkit implements
        found = hf.get(name, value)
        if name == "mask_feature_min_masks" and not hf.get("mask_feature_prob"):
            continue  # unused without feature masking
        if found != value:
            raise ConfigError(
                f"{source}: {name}={found!r} cannot be represented in w2vkit (it implements "
                f"only {value!r}"
                + (
                    "; set loss.diversity_weight in the pretraining config instead)"
                    if name == "diversity_loss_weight"
                    else ")"
                )
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
    """Every size field a number within `HF_MAXIMA` / `HF_LIST_MAXIMA`, before anything is built."""
    for name, limit in HF_MAXIMA.items():
        value = hf.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {name}={value!r:.60} is not a number")
        if value > limit:
            raise ConfigError(f"{source}: {name}={value:g} exceeds {limit}, the most w2vkit loads")
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


def to_hf_state(
    cfg: ModelConfig, state: dict[str, Tensor], *, heads: bool = True
) -> dict[str, Tensor]:
    """w2vkit state dict -> `Wav2Vec2ForPreTraining` (heads=True) or `Wav2Vec2Model` keys."""
    state = dict(state)
    if cfg.conv_dim == cfg.transformer.model_dim:  # HF always projects; C == D -> identity
        state["feature_projection.weight"] = torch.eye(cfg.conv_dim)
        state["feature_projection.bias"] = torch.zeros(cfg.conv_dim)
    if not heads:
        state = {k: v for k, v in state.items() if not k.startswith(PRETRAINING_HEADS)}
    out = KEYS.from_w2vkit(state, source="w2vkit state dict")
    prefix = "wav2vec2." if heads else ""
    return {
        (k if k.startswith(_HF_HEADS) else prefix + k): v.detach().cpu().contiguous().clone()
        for k, v in out.items()
    }


def from_hf_state(
    cfg: ModelConfig, hf_state: dict[str, Tensor], *, source: str
) -> dict[str, Tensor]:
    """HF state dict (ForPreTraining, Model, or ForCTC without its `lm_head`) -> w2vkit."""
    renamed = {}
    for key, value in hf_state.items():
        for old, new in _LEGACY_WEIGHT_NORM.items():
            key = key.replace(old, new)
        if key.startswith("lm_head."):  # CTC fine-tuning head: not part of the pretraining model
            continue
        renamed[key.removeprefix("wav2vec2.")] = value
    state = KEYS.to_w2vkit(renamed, source=source)
    if cfg.conv_dim == cfg.transformer.model_dim and "feature_projection.weight" in state:
        weight, bias = state.pop("feature_projection.weight"), state.pop("feature_projection.bias")
        if tuple(weight.shape) != (cfg.conv_dim, cfg.conv_dim):
            raise CheckpointError(
                f"{source}: feature_projection.projection.weight {tuple(weight.shape)} does not "
                f"fit the config (conv_dim = hidden_size = {cfg.conv_dim})"
            )
        if not (_is_identity(weight) and not bias.any()):
            raise ConfigError(
                f"{source}: feature_projection.projection is not the identity, which w2vkit "
                "cannot represent when conv_dim == hidden_size"
            )
    check_state_dict(cfg, state, source=source, optional_prefixes=encoder_only_prefixes(cfg, state))
    return state


def _is_identity(weight: Tensor) -> bool:
    """A square `weight` == eye, checked without allocating an eye of the config's size."""
    return bool((weight.diagonal() == 1).all()) and int(torch.count_nonzero(weight)) == len(weight)


def _shard_files(directory: Path, index: Path) -> list[Path]:
    """The shard files an HF `*.index.json` names; a malformed index or a shard outside
    `directory` is a CheckpointError."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not (isinstance(weight_map, dict) and weight_map) or not all(
            isinstance(s, str) for s in weight_map.values()
        ):
            raise TypeError('"weight_map" does not map tensor names to shard file names')
        shards = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        reason = 'no "weight_map" key' if isinstance(err, KeyError) else str(err)
        raise CheckpointError(
            f"{index}: not a valid HF weight index ({reason}); expected "
            '{"weight_map": {"tensor name": "shard file", ...}}'
        ) from None
    root = directory.resolve()
    files = []
    for shard in shards:
        path = (directory / shard).resolve()
        if not path.is_relative_to(root):
            raise CheckpointError(f"{index}: shard {shard!r} lies outside {directory}")
        files.append(path)
    return files


def read_hf_weights(directory: Path) -> dict[str, Tensor]:
    """Weights of an HF model directory: safetensors (single or sharded), else pytorch_model.bin."""
    for name, single, index in (
        ("safetensors", "model.safetensors", "model.safetensors.index.json"),
        ("bin", "pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        files = [directory / single] if (directory / single).is_file() else []
        if not files and (directory / index).is_file():
            files = _shard_files(directory, directory / index)
        if files:
            state: dict[str, Tensor] = {}
            for file in files:
                if name == "safetensors":
                    state.update(_read_safetensors(file))
                else:
                    weights = load_torch_file(file)
                    if not isinstance(weights, dict):
                        raise CheckpointError(f"{file}: not a state dict")
                    state.update(weights)
            return state
    raise CheckpointError(
        f"{directory}: no model.safetensors or pytorch_model.bin (sharded or not)"
    )


def _read_safetensors(file: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(file))
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"{file}: truncated or corrupt safetensors file ({err})") from err


def load_hf(directory: str | Path, *, weights: str | Path | None = None) -> Pretrained:
    """An HF model directory; `weights` names one safetensors file to read instead of the
    directory's own weights (a bare `model.safetensors` next to its `config.json`)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    try:
        hf = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config_path}: cannot read an HF config ({err})") from err
    cfg = config_from_hf(hf, source=str(config_path))
    if weights is None:
        hf_state, source = read_hf_weights(directory), str(directory)
    else:
        hf_state, source = _read_safetensors(Path(weights)), str(weights)
    state = from_hf_state(cfg, hf_state, source=source)
    pre = directory / "preprocessor_config.json"
    normalize = json.loads(pre.read_text()).get("do_normalize") if pre.is_file() else None
    return Pretrained(cfg, state, normalize if isinstance(normalize, bool) else None)


def save_hf(pretrained: Pretrained, directory: str | Path, *, heads: bool = True) -> None:
    """Write config.json, model.safetensors and preprocessor_config.json for `from_pretrained`."""
    cfg = pretrained.cfg
    if heads and "quantizer.codevectors" not in pretrained.state_dict:
        raise ConfigError(
            "the model has no pretraining heads (quantizer, projections) to write; "
            "write a Wav2Vec2Model directory instead (--hf-class model)"
        )
    hf = hf_config_from_w2vkit(
        cfg, architecture="Wav2Vec2ForPreTraining" if heads else "Wav2Vec2Model"
    )
    state = to_hf_state(cfg, pretrained.state_dict, heads=heads)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    write_preprocessor(directory, cfg, pretrained.normalize)


def write_preprocessor(directory: Path, cfg: ModelConfig, normalize: bool | None) -> None:
    # HF convention: layer-norm extractors (LV-60) take attention masks and normalised input; group
    # norm ones must not be given padding masks. An explicit `normalize` from training wins.
    layer_norm = cfg.feature_extractor.norm_mode == "layer_norm"
    preprocessor = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": normalize if normalize is not None else layer_norm,
        "return_attention_mask": layer_norm,
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")


# --- Wav2Vec2ForCTC: fine-tuned models with their tokenizer ---------------------------------------
# w2vkit keeps fairseq's index layout (0 blank, 1 <pad>, 2 </s>, 3 <unk>, then the letters). HF's
# conversion of fairseq models keeps the rows and names index 0 "<pad>" (HF's CTC blank is its pad
# token) and index 1 "<s>"; exported vocab.json files use these names.
HF_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
_FILLER_BIAS = -1e4  # a special the HF model lacks gets a row no frame ever picks


def save_hf_ctc(finetuned: FineTuned, directory: str | Path) -> None:
    """Write a `Wav2Vec2ForCTC` + `Wav2Vec2Processor` directory (weights, config, tokenizer)."""
    cfg, vocab = finetuned.cfg, finetuned.vocab
    hf = hf_config_from_w2vkit(cfg, architecture="Wav2Vec2ForCTC")
    hf |= {
        "vocab_size": len(vocab),
        "pad_token_id": BLANK,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "final_dropout": finetuned.final_dropout_prob,
        "ctc_loss_reduction": "sum",
        "ctc_zero_infinity": True,
    }
    state = finetuned.state_dict
    encoder = {
        k.removeprefix("wav2vec2."): v for k, v in state.items() if k.startswith("wav2vec2.")
    }
    out = {f"wav2vec2.{k}": v for k, v in to_hf_state(cfg, encoder, heads=False).items()}
    out |= {
        k: state[k].detach().cpu().contiguous().clone() for k in ("lm_head.weight", "lm_head.bias")
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    save_file(out, str(directory / "model.safetensors"), metadata={"format": "pt"})
    write_preprocessor(directory, cfg, finetuned.normalize)
    names = list(HF_SPECIALS) + vocab.symbols[len(HF_SPECIALS) :]
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    files = {
        "vocab.json": {name: i for i, name in enumerate(names)},
        "special_tokens_map.json": specials,
        "tokenizer_config.json": specials
        | {
            "tokenizer_class": "Wav2Vec2CTCTokenizer",
            "word_delimiter_token": WORD_SEPARATOR,
            "do_lower_case": False,
            "processor_class": "Wav2Vec2Processor",
        },
    }
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")


def load_hf_ctc(directory: str | Path) -> FineTuned:
    """An HF `Wav2Vec2ForCTC` directory -> w2vkit's fine-tuned model, rows in w2vkit's layout."""
    from w2vkit.finetune.model import FineTuned

    directory = Path(directory)
    config_path = directory / "config.json"
    try:
        hf = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config_path}: cannot read an HF config ({err})") from err
    if "Wav2Vec2ForCTC" not in (hf.get("architectures") or []):
        raise ConfigError(
            f"{config_path}: architectures={hf.get('architectures')}, not Wav2Vec2ForCTC"
        )
    try:
        tokens = json.loads((directory / "vocab.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{directory}: no readable vocab.json ({err})") from err
    cfg = config_from_hf(hf, source=str(config_path))
    weights = read_hf_weights(directory)
    head = {
        k.removeprefix("lm_head."): weights.pop(k)
        for k in list(weights)
        if k.startswith("lm_head.")
    }
    encoder = from_hf_state(cfg, weights, source=str(directory))
    tokenizer = directory / "tokenizer_config.json"
    named = json.loads(tokenizer.read_text()) if tokenizer.is_file() else {}
    by_index = {int(i): t for t, i in tokens.items()}
    pad_id = int(hf.get("pad_token_id", tokens.get(named.get("pad_token", "<pad>"), 0)))
    # w2vkit rows 0-3: blank (HF pad), <pad> (HF bos), </s>, <unk>; then the other tokens in order.
    special_ids = [pad_id] + [
        tokens.get(named.get(key, default))
        for key, default in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))
    ]
    rest = [i for i in sorted(by_index) if i not in special_ids]
    weight, bias = head["weight"], head["bias"]
    rows = [
        (weight[i], bias[i])
        if i is not None
        else (torch.zeros_like(weight[0]), torch.tensor(_FILLER_BIAS))
        for i in special_ids + rest
    ]
    symbols = [by_index[i] for i in rest]
    state = {f"wav2vec2.{k}": v for k, v in encoder.items()}
    state["lm_head.weight"] = torch.stack([w for w, _ in rows])
    state["lm_head.bias"] = torch.stack([b.to(bias.dtype) for _, b in rows])
    pre = directory / "preprocessor_config.json"
    normalize = json.loads(pre.read_text()).get("do_normalize") if pre.is_file() else False
    return FineTuned(
        cfg=cfg,
        vocab=Vocabulary(symbols),
        state_dict=state,
        normalize=bool(normalize),
        final_dropout_prob=float(hf.get("final_dropout", 0.0)),
    )
