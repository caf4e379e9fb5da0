"""The pretraining objectives by name (`objective:` in a run's config), and the config loader.

Adding an objective: a sibling module of `wav2vec2.py` that builds a `PretrainObjective`, and its
entry here. `register` adds one at run time (a plug-in, a test's toy objective).
"""

from __future__ import annotations

from w2vkit.config import ConfigError, deep_merge, from_dict
from w2vkit.model.config import PRESETS, ModelConfig, preset
from w2vkit.pretrain.best_rq import BEST_RQ
from w2vkit.pretrain.config import PretrainConfig
from w2vkit.pretrain.data2vec2 import DATA2VEC2
from w2vkit.pretrain.hubert.objective import HUBERT
from w2vkit.pretrain.objective import PretrainObjective
from w2vkit.pretrain.wav2vec2 import WAV2VEC2
from w2vkit.train.diagnostics import Finding

OBJECTIVES: dict[str, PretrainObjective] = {
    o.name: o for o in (WAV2VEC2, HUBERT, DATA2VEC2, BEST_RQ)
}
"""Every objective `w2vkit pretrain` can train, by the name `objective:` gives."""


def register(objective: PretrainObjective) -> None:
    """Make `objective` selectable by its name (replacing one of the same name)."""
    OBJECTIVES[objective.name] = objective


def lookup(name: object) -> PretrainObjective:
    """The objective called `name`; a ConfigError naming the known ones otherwise."""
    if not isinstance(name, str) or name not in OBJECTIVES:
        raise ConfigError(f"objective: {name!r} is not one of {', '.join(map(repr, OBJECTIVES))}")
    return OBJECTIVES[name]


def findings(records: list[dict], config: dict) -> list[Finding]:
    """The health findings over a run's log records, by the signatures of the objective its
    config (config.yaml's dict; older runs name none: wav2vec 2.0) names."""
    entry = lookup(config.get("objective", PretrainConfig.objective))
    monitor = entry.health(config) if entry.health is not None else None
    if monitor is None:
        return []
    found = [finding for record in records for finding in monitor.observe(record)]
    return found + monitor.finish()


def build_config(layers: list[dict], *, init_model: ModelConfig | None = None) -> PretrainConfig:
    """Merge raw dict layers (YAML files, then overrides) over the defaults into the config class
    of the objective they name (`objective:`, default wav2vec2).

    `model.preset` (one of the model presets) picks the model's base before the other `model.*` keys
    apply. `init_model` (the config of an `--init-from` source) replaces the preset: the model comes
    from the source and only explicit `model.*` keys change it.
    """
    merged: dict = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    config_class = lookup(merged.get("objective", PretrainConfig.objective)).config
    model_dict = merged.pop("model", None) or {}
    if not isinstance(model_dict, dict):
        raise ConfigError(f"model: expected a mapping such as {{preset: tiny}}, got {model_dict!r}")
    model_dict = dict(model_dict)
    preset_name = model_dict.pop("preset", None)
    if preset_name is not None and preset_name not in PRESETS:
        raise ConfigError(
            f"model.preset: {preset_name!r} is not one of {', '.join(map(repr, PRESETS))}"
        )
    if init_model is not None:
        model_base = init_model
    else:
        model_base = preset(preset_name) if preset_name else ModelConfig()
    model = from_dict(ModelConfig, model_dict, base=model_base, where="model")
    return from_dict(config_class, merged, base=config_class(model=model))


__all__ = ["OBJECTIVES", "build_config", "findings", "lookup", "register"]
