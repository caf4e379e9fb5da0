"""HF transformers `Wav2Vec2ForPreTraining` / `Wav2Vec2Model` directories <-> w2vkit, both ways.

The config is translated by `hf_config`; here are the tensor names and the directory's files.
Reading never loads a pickle: safetensors where present, else `pytorch_model.bin` through safe_load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from w2vkit.config import ConfigError
from w2vkit.interop.hf_config import config_from_hf, hf_config_from_w2vkit
from w2vkit.interop.keymap import KeyMap
from w2vkit.interop.native import PRETRAINING_HEADS, check_state_dict, encoder_only_prefixes
from w2vkit.interop.record import ModelRecord
from w2vkit.interop.safe_load import CheckpointError, load_torch_file
from w2vkit.model.config import ModelConfig

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


def load_hf(directory: str | Path, *, weights: str | Path | None = None) -> ModelRecord:
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
    return ModelRecord(cfg, state, normalize if isinstance(normalize, bool) else None)


def save_hf(record: ModelRecord, directory: str | Path, *, heads: bool = True) -> None:
    """Write config.json, model.safetensors and preprocessor_config.json for HF's
    `from_pretrained` (a fine-tuned record: its encoder, as a `Wav2Vec2Model`)."""
    cfg, weights = record.cfg, record.encoder_state()
    if heads and "quantizer.codevectors" not in weights:
        raise ConfigError(
            "the model has no pretraining heads (quantizer, projections) to write; "
            "write a Wav2Vec2Model directory instead (--hf-class model)"
        )
    hf = hf_config_from_w2vkit(
        cfg, architecture="Wav2Vec2ForPreTraining" if heads else "Wav2Vec2Model"
    )
    state = to_hf_state(cfg, weights, heads=heads)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    write_preprocessor(directory, cfg, record.normalize)


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
