"""Translate a fairseq (hydra) pretraining YAML into a w2vkit `PretrainConfig` layer.

fairseq YAML files hold only differences from fairseq's dataclass defaults, so every key of the
table below starts at fairseq's default and the file's value overrides it; the result is a full
w2vkit layer. Keys outside the table are reported once as unused. A key whose value selects
behaviour w2vkit does not implement (e.g. `model.layer_type: conformer`) is an error naming it.
`docs/fairseq_config.md` is this table in prose.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from w2vkit.config import ConfigError, load_yaml, nest, number_or_self, to_dict
from w2vkit.interop import fairseq as fairseq_model

Convert = Callable[[Any, str], dict[str, Any]]


def _to(key: str) -> Convert:
    return lambda value, where: {key: value}


def _only(*allowed: Any) -> Convert:
    """A fairseq key w2vkit supports at one value only (anything else would silently change semantics)."""

    def convert(value: Any, where: str) -> dict[str, Any]:
        if value not in allowed:
            raise ConfigError(
                f"fairseq {where}={value!r} is not supported by w2vkit (allowed: "
                f"{', '.join(map(repr, allowed))})"
            )
        return {}

    return convert


def _first(key: str) -> Convert:
    """fairseq per-epoch lists (`lr: [0.0005]`, `update_freq: [1]`): w2vkit takes a single value."""

    def convert(value: Any, where: str) -> dict[str, Any]:
        values = value if isinstance(value, (list, tuple)) else [value]
        if len(values) != 1:
            raise ConfigError(
                f"fairseq {where}={value!r}: per-epoch lists are not supported, give one value"
            )
        return {key: values[0]}

    return convert


def _tuple(value: Any, where: str) -> tuple:
    """fairseq writes tuples as strings: `adam_betas: (0.9,0.98)`; parse literals only, never eval."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as err:
            raise ConfigError(f"fairseq {where}={value!r} is not a tuple of numbers") from err
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"fairseq {where}={value!r} is not a tuple of numbers")
    return tuple(value)


def _precision(name: str) -> Convert:
    return lambda value, where: {"train.precision": name} if value else {}


def _loss_weights(value: Any, where: str) -> dict[str, Any]:
    if value is None:  # fairseq adds no extra loss terms at all
        return {"loss.diversity_weight": 0.0, "loss.feature_penalty_weight": 0.0}
    weights = list(value) * 2 if len(value) == 1 else list(value)  # fairseq broadcasts one weight
    if len(weights) != 2:
        raise ConfigError(f"fairseq {where}={value!r}: expected [diversity, feature_penalty]")
    return {
        "loss.diversity_weight": float(weights[0]),
        "loss.feature_penalty_weight": float(weights[1]),
    }


def _optional(key: str) -> Convert:
    """fairseq None (no limit) keeps w2vkit's default, which `FairseqTranslation.notes` says."""

    def convert(value: Any, where: str) -> dict[str, Any]:
        return {} if value is None else {key: value}

    convert.keeps_default = key  # type: ignore[attr-defined]
    return convert


def _total_steps(value: Any, where: str) -> dict[str, Any]:
    # fairseq's default is the interpolation "${optimization.max_update}", which is w2vkit's 0.
    return {"optim.total_steps": 0 if isinstance(value, str) else int(value)}


# fmt: off
# (section, fairseq key): (fairseq's default when the YAML omits the key, conversion to w2vkit keys).
# The `model` section goes through the checkpoint converter's table, `w2vkit.interop.fairseq.FIELDS`.
FAIRSEQ_KEYS: dict[tuple[str, str], tuple[Any, Convert]] = {
    ("common", "fp16"):                     (False, lambda v, w: {"train.precision": "fp16" if v else "fp32"}),
    ("common", "memory_efficient_fp16"):    (False, _precision("fp16")),
    ("common", "amp"):                      (False, _precision("fp16")),
    ("common", "bf16"):                     (False, _precision("bf16")),
    ("common", "fp16_init_scale"):          (128, lambda v, w: {"train.fp16_init_scale": float(v)}),
    ("common", "seed"):                     (1, _to("train.seed")),
    ("common", "log_interval"):             (100, _to("train.log_interval")),
    ("common", "tensorboard_logdir"):       (None, lambda v, w: {"train.tensorboard": bool(v)}),
    ("checkpoint", "save_dir"):             (None, lambda v, w: {} if v is None else {"train.out_dir": v}),
    ("checkpoint", "save_interval_updates"): (0, _to("train.save_interval_steps")),
    ("checkpoint", "keep_interval_updates"): (-1, lambda v, w: {"train.keep_interval_checkpoints": max(v, 0)}),
    ("task", "_name"):                      ("audio_pretraining", _only("audio_pretraining")),
    ("task", "data"):                       ("???", lambda v, w: {} if v in (None, "???") else {"data.manifest_dir": v}),
    ("task", "sample_rate"):                (16000, _to("data.sample_rate")),
    ("task", "normalize"):                  (False, _to("data.normalize")),
    ("task", "enable_padding"):             (False, _to("data.pad")),
    ("task", "max_sample_size"):            (None, _optional("data.max_samples")),
    ("task", "min_sample_size"):            (None, lambda v, w: {"data.min_samples": v or 0}),
    ("task", "labels"):                     (None, _only(None)),
    ("dataset", "max_tokens"):              (None, _optional("data.max_batch_samples")),
    ("dataset", "batch_size"):              (None, _to("data.max_batch_size")),
    ("dataset", "required_batch_size_multiple"): (8, _to("data.required_batch_size_multiple")),
    ("dataset", "num_workers"):             (1, _to("data.num_workers")),
    ("dataset", "validate_interval_updates"): (0, _to("train.validate_interval_steps")),
    ("dataset", "valid_subset"):            ("valid", _to("data.valid_split")),
    ("dataset", "train_subset"):            ("train", _to("data.train_split")),
    ("criterion", "_name"):                 ("wav2vec", _only("wav2vec")),
    ("criterion", "infonce"):               (False, _only(True)),
    ("criterion", "loss_weights"):          (None, _loss_weights),
    ("optimization", "max_update"):         (0, _to("train.max_steps")),
    ("optimization", "max_epoch"):          (0, _to("train.max_epochs")),
    ("optimization", "lr"):                 ([0.25], _first("optim.lr")),
    ("optimization", "update_freq"):        ([1], _first("train.update_freq")),
    ("optimization", "clip_norm"):          (0.0, _to("optim.clip_norm")),
    # fairseq adam = decoupled weight decay
    ("optimizer", "_name"):                 ("adam", _only("adam")),
    ("optimizer", "adam_betas"):            ("(0.9, 0.999)", lambda v, w: {"optim.betas": list(_tuple(v, w))}),
    ("optimizer", "adam_eps"):              (1e-8, _to("optim.eps")),
    ("optimizer", "weight_decay"):          (0.0, _to("optim.weight_decay")),
    ("lr_scheduler", "_name"):              ("polynomial_decay", _only("polynomial_decay")),
    ("lr_scheduler", "warmup_updates"):     (0, _to("optim.warmup_steps")),
    ("lr_scheduler", "end_learning_rate"):  (0.0, _to("optim.end_lr")),
    ("lr_scheduler", "power"):              (1.0, _to("optim.power")),
    ("lr_scheduler", "total_num_update"):   ("${optimization.max_update}", _total_steps),
}

# Keys fairseq recipes set that w2vkit reads nowhere, with the reason the report gives.
UNUSED_REASONS: dict[tuple[str, str], str] = {
    ("common", "log_format"):               "w2vkit always logs JSON lines",
    ("checkpoint", "no_epoch_checkpoints"): "w2vkit writes no per-epoch checkpoints",
    ("distributed_training", "distributed_world_size"):
        "the world size comes from torchrun; keep the global batch with train.update_freq = this / processes",
    ("distributed_training", "ddp_backend"): "w2vkit always uses torch DistributedDataParallel",
    ("dataset", "skip_invalid_size_inputs_valid_test"): "cropped rows always fit data.max_batch_samples",
    ("criterion", "log_keys"):              "w2vkit always logs prob_perplexity, code_perplexity and temp",
}
# fmt: on

SECTIONS = (
    "common",
    "checkpoint",
    "task",
    "dataset",
    "distributed_training",
    "criterion",
    "optimization",
    "optimizer",
    "lr_scheduler",
    "model",
)


@dataclass
class FairseqTranslation:
    layer: dict
    """Nested w2vkit config layer (feed it to `build_config`)."""
    unused: list[str]
    """One line per fairseq key of the file that w2vkit does not use, with the reason."""
    notes: list[str]
    """Keys the file leaves at fairseq's "no limit" default, where w2vkit keeps its own default."""


def translate_fairseq_config(data: dict, *, source: str = "fairseq config") -> FairseqTranslation:
    """fairseq config dict (sections as in the YAML) -> w2vkit layer, through `FAIRSEQ_KEYS` and,
    for the `model` section, the checkpoint converter's table (`w2vkit.interop.fairseq.FIELDS`)."""
    unknown_sections = sorted(set(data) - set(SECTIONS))
    unused = [f"{name}: section not used by w2vkit" for name in unknown_sections]
    for name in SECTIONS:
        if not isinstance(data.get(name) or {}, dict):
            raise ConfigError(f"{source}: section {name!r} must be a mapping, got {data[name]!r}")
    flat: dict[str, Any] = {}
    notes = []
    for (section, key), (default, convert) in FAIRSEQ_KEYS.items():
        value = number_or_self((data.get(section) or {}).get(key, default))
        kept = getattr(convert, "keeps_default", None)
        if value is None and kept:
            notes.append(
                f"{section}.{key} is not set (no limit in fairseq): w2vkit keeps its default {kept}"
            )
        flat.update(convert(value, f"{section}.{key}"))
    for section in SECTIONS[:-1]:
        for key, value in (data.get(section) or {}).items():
            if (section, key) not in FAIRSEQ_KEYS:
                reason = UNUSED_REASONS.get((section, key), "not used by w2vkit")
                unused.append(f"{section}.{key}={value!r}: {reason}")
    layer = nest(flat)
    layer["model"], model_unused = _translate_model(dict(data.get("model") or {}), source)
    return FairseqTranslation(layer=layer, unused=unused + model_unused, notes=notes)


def _translate_model(section: dict, source: str) -> tuple[dict, list[str]]:
    """The `model` section as the checkpoint converter reads a checkpoint's `cfg.model`: absent
    fields take fairseq's `Wav2Vec2Config` defaults; unsupported values are errors."""
    name = section.pop("_name", "wav2vec2")
    if name != "wav2vec2":
        raise ConfigError(f"{source}: model._name={name!r}: only wav2vec2 pretraining is supported")
    unused = [
        f"model.{key}={value!r}: not a fairseq wav2vec2 model field"
        for key, value in section.items()
        if key not in fairseq_model.DEFAULTS
    ]
    unused += [
        f"model.{key}={value!r}: no effect on a transformer model with a depth-1 quantizer"
        for key, value in section.items()
        if key in fairseq_model.IGNORED
    ]
    fields = {
        **fairseq_model.DEFAULTS,
        **{k: number_or_self(v) for k, v in section.items() if k in fairseq_model.DEFAULTS},
    }
    try:
        model = fairseq_model.config_from_fairseq(fields, where="model")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err
    return to_dict(model), unused


def load_fairseq_config(path: str | Path) -> FairseqTranslation:
    return translate_fairseq_config(load_yaml(path), source=str(path))


__all__ = ["FAIRSEQ_KEYS", "FairseqTranslation", "load_fairseq_config", "translate_fairseq_config"]
