"""`PretrainConfig`: everything a `w2vkit pretrain` run needs, with w2vkit's own names.

Defaults equal fairseq's LibriSpeech BASE recipe (`wav2vec2_base_librispeech.yaml`, Baevski et al.,
2020, arXiv:2006.11477). Loading order: defaults -> `model.preset` -> YAML -> `a.b=value` overrides,
all through `w2vkit.config.from_dict`, so an unknown key or a wrong type fails with the key named.
`docs/training.md` explains every field; `docs/fairseq_config.md` maps fairseq's keys onto them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from w2vkit.config import ConfigError, check, deep_merge, from_dict, load_yaml, parse_overrides
from w2vkit.configs import Kind, find_config
from w2vkit.data.config import DataConfig
from w2vkit.model.config import PRESETS, ModelConfig, preset


@dataclass(kw_only=True)
class AdamConfig:
    """The Adam(W) fields every objective's `optim` section shares (what `build_optimizer` reads)."""

    optimizer: Literal["adamw", "adam"] = "adamw"
    """adamw: decoupled weight decay on all parameters (what fairseq's `adam` does); adam: L2 in the gradient."""
    lr: float = 5e-4
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    eps_placement: Literal["fairseq", "torch"] = "fairseq"
    """fairseq: eps added to sqrt(v) before bias correction (fairseq's Adam, up to 7x larger in
    the first updates); torch: after it (torch.optim.AdamW, HF)."""
    weight_decay: float = 0.01
    clip_norm: float = 0.0
    """Clip the global gradient L2 norm to this; 0 disables clipping."""
    total_steps: int = 0
    """Updates the LR schedule spans (fairseq total_num_update / max_update); 0 means `train.max_steps`."""

    def __post_init__(self) -> None:
        check(self.optimizer in ("adamw", "adam"), "optim.optimizer", "must be adamw or adam")
        check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        for i, beta in enumerate(self.betas):
            check(0.0 <= beta < 1.0, f"optim.betas[{i}]", f"must be in [0, 1), got {beta}")
        check(self.eps > 0, "optim.eps", f"must be > 0, got {self.eps}")
        check(
            self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}"
        )
        check(
            self.clip_norm >= 0, "optim.clip_norm", f"must be >= 0 (0 = off), got {self.clip_norm}"
        )
        check(
            self.total_steps >= 0,
            "optim.total_steps",
            f"must be >= 0 (0 = train.max_steps), got {self.total_steps}",
        )


@dataclass(kw_only=True)
class OptimConfig(AdamConfig):
    """Adam(W) with a polynomial-decay schedule after a linear warmup (fairseq `polynomial_decay`)."""

    warmup_steps: int = 32000
    """Updates of linear warmup to `lr`."""
    end_lr: float = 0.0
    """Learning rate at `total_steps` and after (fairseq end_learning_rate)."""
    power: float = 1.0
    """Exponent of the decay; 1 is linear."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}"
        )
        check(
            0 <= self.end_lr <= self.lr,
            "optim.end_lr",
            f"must be in [0, optim.lr], got {self.end_lr}",
        )
        check(self.power > 0, "optim.power", f"must be > 0, got {self.power}")


@dataclass(kw_only=True)
class LossConfig:
    """Weights of the extra terms of the pretraining loss (fairseq `criterion.loss_weights`)."""

    diversity_weight: float = 0.1
    """alpha in Eq. (2): codebook diversity penalty."""
    feature_penalty_weight: float = 10.0
    """L2 penalty on the conv features; 0 for LARGE LV-60."""

    def __post_init__(self) -> None:
        check(
            self.diversity_weight >= 0,
            "loss.diversity_weight",
            f"must be >= 0, got {self.diversity_weight}",
        )
        check(
            self.feature_penalty_weight >= 0,
            "loss.feature_penalty_weight",
            f"must be >= 0, got {self.feature_penalty_weight}",
        )


@dataclass(kw_only=True)
class TrainConfig:
    """The loop: stopping, accumulation, precision, cadence of logs, validation and checkpoints."""

    max_steps: int = 400_000
    """Stop after this many optimizer updates (fairseq max_update); 0: no limit."""
    max_epochs: int = 0
    """Stop after this many passes over the data (fairseq max_epoch); 0: no limit."""
    max_minutes: float = 0.0
    """Wall-clock budget of the update loop (resumed sessions add up); 0: none. The loop times its
    first updates, plans how many fit, re-plans as the pace changes and fits the LR and Gumbel
    temperature schedules to the plan (docs/training.md, "A time budget")."""
    update_freq: int = 1
    """Micro-batches accumulated per update; fairseq's README: 64 / number of GPUs for BASE."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp16"
    """bf16: autocast (CPU or GPU); fp16: autocast with dynamic loss scaling (GPU only)."""
    fp16_init_scale: float = 128.0
    allow_tf32: bool = True
    """TF32 matmuls and convolutions on GPUs that have them."""
    seed: int = 1
    out_dir: str = "runs/pretrain"
    """Run directory: config.yaml, train_log.jsonl, checkpoints; resumes from checkpoint_last.pt in it."""
    log_interval: int = 200
    """Updates per JSON log line."""
    validate_interval_steps: int = 0
    """Validate every this many updates (0: only at checkpoint saves and at the end)."""
    save_interval_steps: int = 25_000
    """Write checkpoint_<epoch>_<step>.pt and checkpoint_last.pt every this many updates; 0: only at the end."""
    keep_interval_checkpoints: int = 1
    """Keep the newest N checkpoint_<epoch>_<step>.pt files; 0 keeps all."""
    tensorboard: bool = False
    """Also write scalars to <out_dir>/tensorboard (needs the `tensorboard` package)."""
    init_from: str = ""
    """Start from pretrained weights: a fairseq .pt, an HF directory or a w2vkit checkpoint."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_consecutive_nonfinite: int = 20
    """Stop (with a checkpoint) after this many updates in a row skipped for a non-finite loss or gradient."""
    on_stuck: Literal["warn", "rescue", "stop"] = "warn"
    """When the health monitor finds the run at chance (`loss_at_chance`) or its codebook collapsed:
    warn: say so and go on; rescue: roll back to the last checkpoint before the finding's evidence
    (or the initial state) and apply the diagnosed change (docs/diagnostics.md, "Rescue"); stop:
    save and end the run with exit status 3."""
    diagnostics: bool = False
    """Also log why a run sits on the plateau: per-module gradient norms (`grad_norm/<module>`),
    the spread of the contrastive logits and the feature norms (docs/convergence.md); device-side
    sums, one host copy per log line."""
    allow_data_change: bool = False
    """Resume on a changed training manifest by starting a new epoch (else such a resume is refused)."""
    dist_timeout_minutes: float = 5.0
    """How long a collective waits for the other processes before the run fails, naming the late rank."""

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "max_epochs",
            "validate_interval_steps",
            "save_interval_steps",
            "keep_interval_checkpoints",
        ):
            check(
                getattr(self, name) >= 0,
                f"train.{name}",
                f"must be >= 0, got {getattr(self, name)}",
            )
        check(
            math.isfinite(self.max_minutes),
            "train.max_minutes",
            f"must be a finite number of minutes (0: no budget), got {self.max_minutes}",
        )
        check(self.max_minutes >= 0, "train.max_minutes", f"must be >= 0, got {self.max_minutes}")
        check(
            self.max_steps > 0 or self.max_epochs > 0 or self.max_minutes > 0,
            "train.max_steps",
            "set train.max_steps, train.max_epochs or train.max_minutes (all are 0, the run "
            "would never stop)",
        )
        check(self.update_freq >= 1, "train.update_freq", f"must be >= 1, got {self.update_freq}")
        check(
            self.log_interval >= 1, "train.log_interval", f"must be >= 1, got {self.log_interval}"
        )
        check(self.fp16_init_scale > 0, "train.fp16_init_scale", "must be > 0")
        check(
            self.max_consecutive_nonfinite >= 1, "train.max_consecutive_nonfinite", "must be >= 1"
        )
        check(
            self.on_stuck in ("warn", "rescue", "stop"),
            "train.on_stuck",
            f"must be warn, rescue or stop, got {self.on_stuck!r}",
        )
        check(bool(self.out_dir), "train.out_dir", "must not be empty")
        check(0 <= self.seed < 2**32, "train.seed", f"must be in [0, 2**32), got {self.seed}")
        check(
            self.dist_timeout_minutes > 0,
            "train.dist_timeout_minutes",
            f"must be > 0, got {self.dist_timeout_minutes}",
        )


@dataclass(kw_only=True)
class PretrainConfig:
    """A wav2vec 2.0 pretraining run; the defaults reproduce fairseq's BASE LibriSpeech recipe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check(
            self.optim.total_steps > 0 or self.train.max_steps > 0 or self.train.max_minutes > 0,
            "optim.total_steps",
            "the LR schedule needs a length: set optim.total_steps when training by train.max_epochs",
        )

    @property
    def total_steps(self) -> int:
        """Length of the LR decay in updates; 0 when only `train.max_minutes` gives it (the plan)."""
        return self.optim.total_steps or self.train.max_steps


def build_config(layers: list[dict], *, init_model: ModelConfig | None = None) -> PretrainConfig:
    """Merge raw dict layers (YAML files, then overrides) over the defaults into a PretrainConfig.

    `model.preset` (one of the model presets) picks the model's base before the other `model.*` keys
    apply. `init_model` (the config of an `--init-from` source) replaces the preset: the model comes
    from the source and only explicit `model.*` keys change it.
    """
    merged: dict = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
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
    return from_dict(PretrainConfig, merged, base=PretrainConfig(model=model))


def load_layers(
    config_path: str | Path | None, overrides: list[str], kind: Kind = "pretrain"
) -> list[dict]:
    """The raw layers of a run: the YAML file or shipped `kind` config name (if any), then the
    `a.b=value` overrides."""
    layers = [load_yaml(find_config(config_path, kind))] if config_path else []
    if overrides:
        layers.append(parse_overrides(overrides))
    return layers


__all__ = [
    "DataConfig",
    "LossConfig",
    "OptimConfig",
    "PretrainConfig",
    "TrainConfig",
    "build_config",
    "load_layers",
]
