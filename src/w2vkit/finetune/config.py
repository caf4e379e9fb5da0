"""`FinetuneConfig`: a CTC fine-tuning run, with presets mirroring fairseq's fine-tuning recipes.

Defaults are fairseq's `base_10h` recipe (`examples/wav2vec/config/finetuning/base_10h.yaml` over
`Wav2Vec2AsrConfig`, Baevski et al., 2020, arXiv:2006.11477, Table 9). The model section starts
from the `--init-from` encoder's own config; the fine-tuning values (masking, dropout, LayerDrop,
frozen feature extractor) are a layer over it, so a key given in YAML or on the command line wins.
Loading order: defaults -> source model -> preset -> YAML -> `a.b=value` overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from w2vkit.config import ConfigError, check, deep_merge, from_dict
from w2vkit.data.config import ShardStreamConfig
from w2vkit.model.config import ModelConfig
from w2vkit.train.config import AdamConfig, TrainConfig


@dataclass(kw_only=True)
class CTCConfig:
    """The CTC head and what fine-tuning freezes (fairseq `wav2vec_ctc` model + `ctc` criterion)."""

    final_dropout_prob: float = 0.0
    """Dropout between the encoder and the output layer (fairseq final_dropout)."""
    freeze_encoder_steps: int = 10_000
    """Updates during which only the output layer trains (fairseq freeze_finetune_updates)."""
    sentence_avg: bool = True
    """Normalise the summed loss by sentences (True, fairseq's recipes) or by target letters."""
    zero_infinity: bool = True
    """An utterance too short for its transcript contributes 0, not inf (fairseq zero_infinity)."""

    def __post_init__(self) -> None:
        check(0 <= self.final_dropout_prob < 1, "ctc.final_dropout_prob", "must be in [0, 1)")
        check(self.freeze_encoder_steps >= 0, "ctc.freeze_encoder_steps", "must be >= 0")


@dataclass(kw_only=True)
class LabelledDataConfig(ShardStreamConfig):
    """Labelled audio in fairseq's layout: <split>.tsv, <split>.<labels>, dict.<labels>.txt."""

    manifest_dir: str = ""
    train_split: str = "train"
    valid_split: str = "valid"
    """"" (or a missing file) disables validation."""
    labels: str = "ltr"
    """Extension of the target files and of the dictionary (dict.ltr.txt)."""
    sample_rate: int = 16000
    min_samples: int = 0
    normalize: bool = False
    """Must match the pretrained model (True for LARGE LV-60)."""
    max_batch_samples: int = 3_200_000
    """Rows x longest row per batch and process (fairseq max_tokens); longer utterances are skipped."""
    max_batch_size: int | None = None
    required_batch_size_multiple: int = 1
    num_workers: int = 6

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.sample_rate > 0, "data.sample_rate", "must be > 0")
        check(self.min_samples >= 0, "data.min_samples", "must be >= 0")
        check(self.max_batch_samples >= 1, "data.max_batch_samples", "must be >= 1")
        check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        check(self.required_batch_size_multiple >= 1, "data.required_batch_size_multiple", ">= 1")


@dataclass(kw_only=True)
class TriStageOptimConfig(AdamConfig):
    """Adam (fairseq `adam`: decoupled decay, here 0) with the `tri_stage` LR schedule."""

    lr: float = 5e-5
    eps: float = 1e-8
    weight_decay: float = 0.0
    phase_ratios: tuple[float, float, float] = (0.1, 0.4, 0.5)
    """Fractions of `total_steps` for warmup, hold and exponential decay."""
    init_lr_scale: float = 0.01
    final_lr_scale: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            len(self.phase_ratios) == 3 and abs(sum(self.phase_ratios) - 1) < 1e-6,
            "optim.phase_ratios",
            f"three fractions summing to 1, got {list(self.phase_ratios)}",
        )
        check(0 < self.init_lr_scale <= 1, "optim.init_lr_scale", "must be in (0, 1]")
        check(0 < self.final_lr_scale <= 1, "optim.final_lr_scale", "must be in (0, 1]")


def _train_defaults() -> TrainConfig:
    return TrainConfig(
        max_steps=20_000,
        update_freq=4,
        out_dir="runs/finetune",
        save_interval_steps=10_000,
        validate_interval_steps=0,
    )


@dataclass(kw_only=True)
class FinetuneConfig:
    """A CTC fine-tuning run; the defaults are fairseq's base_10h recipe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The encoder: the pretrained model's config with the fine-tuning layer of the preset."""
    ctc: CTCConfig = field(default_factory=CTCConfig)
    data: LabelledDataConfig = field(default_factory=LabelledDataConfig)
    optim: TriStageOptimConfig = field(default_factory=TriStageOptimConfig)
    train: TrainConfig = field(default_factory=_train_defaults)

    def __post_init__(self) -> None:
        check(
            self.optim.total_steps > 0 or self.train.max_steps > 0,
            "optim.total_steps",
            "the LR schedule needs a length: set optim.total_steps when training by epochs",
        )

    @property
    def total_steps(self) -> int:
        return self.optim.total_steps or self.train.max_steps


def _fairseq_model(channel_prob: float, layerdrop_prob: float) -> dict:
    """The encoder settings fairseq's `wav2vec_ctc` applies over the pretrained model."""
    return {
        "input_dropout_prob": 0.0,
        "feature_extractor": {"grad_scale": 0.0},  # feature_grad_mult 0: extractor frozen
        "masking": {
            "time_prob": 0.65,
            "time_span_frames": 10,
            "channel_prob": channel_prob,
            "channel_span_channels": 64,
        },
        "transformer": {
            "dropout_prob": 0.0,
            "attention_dropout_prob": 0.0,
            "activation_dropout_prob": 0.1,
            "layerdrop_prob": layerdrop_prob,
        },
    }


def base_10h() -> dict:
    return {"model": _fairseq_model(0.5, 0.05)}


def base_10m() -> dict:
    """10 minutes of labels: 13k updates, lighter channel masking, validated every 1000."""
    return {
        "model": _fairseq_model(0.25, 0.1),
        "train": {"max_steps": 13_000, "save_interval_steps": 1000},
    }


def base_1h() -> dict:
    return {
        "model": _fairseq_model(0.25, 0.1),
        "train": {"max_steps": 13_000, "save_interval_steps": 1000},
    }


def base_100h() -> dict:
    return {
        "model": _fairseq_model(0.5, 0.1),
        "ctc": {"freeze_encoder_steps": 0},
        "optim": {"lr": 3e-5},
        "train": {"max_steps": 80_000, "save_interval_steps": 10_000},
    }


def cpu() -> dict:
    """The tiny model on a CPU in minutes: short spans for its 32 channels, small batches, fp32."""
    model = _fairseq_model(0.25, 0.0)
    model["masking"] |= {"time_prob": 0.3, "time_span_frames": 5, "channel_span_channels": 4}
    return {
        "model": model,
        "ctc": {"freeze_encoder_steps": 50},
        "optim": {"lr": 2e-3},
        "data": {"max_batch_samples": 320_000, "num_workers": 0},
        "train": {
            "max_steps": 600,
            "update_freq": 1,
            "precision": "fp32",
            "device": "cpu",
            "log_interval": 25,
            "save_interval_steps": 200,
            "validate_interval_steps": 100,
        },
    }


PRESETS = {
    "base_10m": base_10m,
    "base_1h": base_1h,
    "base_10h": base_10h,
    "base_100h": base_100h,
    "cpu": cpu,
}


def build_finetune_config(layers: list[dict], *, init_model: ModelConfig) -> FinetuneConfig:
    """Merge `preset` (a top-level key, default base_10h), then the layers, over `init_model`."""
    merged: dict = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    name = merged.pop("preset", "base_10h")
    if name not in PRESETS:
        raise ConfigError(f"preset: {name!r} is not one of {', '.join(map(repr, PRESETS))}")
    merged = deep_merge(PRESETS[name](), merged)
    model_dict = merged.pop("model", None) or {}
    if not isinstance(model_dict, dict):
        raise ConfigError(f"model: expected a mapping of encoder fields, got {model_dict!r}")
    model = from_dict(ModelConfig, model_dict, base=init_model, where="model")
    return from_dict(FinetuneConfig, merged, base=FinetuneConfig(model=model))


__all__ = [
    "CTCConfig",
    "FinetuneConfig",
    "LabelledDataConfig",
    "PRESETS",
    "TriStageOptimConfig",
    "build_finetune_config",
]
