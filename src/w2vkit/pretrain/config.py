"""`PretrainConfig`: the sections every pretraining run has, whatever its objective.

A run's config is its objective's subclass of `PretrainConfig` (`w2vkit.pretrain.registry`): these
sections plus the objective's own (wav2vec 2.0: `loss`). `objective` names it (default `wav2vec2`).
Defaults equal fairseq's LibriSpeech BASE recipe (`wav2vec2_base_librispeech.yaml`, Baevski et al.,
2020, arXiv:2006.11477). Loading order: defaults -> `model.preset` -> YAML -> `a.b=value`
overrides (`registry.build_config`), so an unknown key or a wrong type fails with the key named.
`docs/training.md` explains every field; `docs/fairseq_config.md` maps fairseq's keys onto them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from w2vkit.config import check
from w2vkit.data.config import DataConfig
from w2vkit.model.config import ModelConfig
from w2vkit.train.config import AdamConfig, TrainConfig


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
class PretrainConfig:
    """The sections of every pretraining run; each objective's config class adds its own."""

    objective: str = "wav2vec2"
    """What the run is trained for: a name in `w2vkit.pretrain.registry.OBJECTIVES`."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
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


__all__ = ["OptimConfig", "PretrainConfig"]
