"""The config sections every training run shares: Adam(W), the loop (`train`), and loading.

Each kind of run composes them with its own sections (and its data section):
`w2vkit.pretrain.config.PretrainConfig` (and each objective's section),
`w2vkit.finetune.config.FinetuneConfig`. Defaults equal fairseq's
LibriSpeech BASE recipe (`wav2vec2_base_librispeech.yaml`, Baevski et al., 2020, arXiv:2006.11477).
Every section loads through `w2vkit.config.from_dict`, so an unknown key or a wrong type fails with
the key named. `docs/training.md` explains every field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from w2vkit.config import check, load_yaml, parse_overrides
from w2vkit.configs import Kind, find_config


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
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """bf16: autocast (CPU or GPU); fp16: autocast with dynamic loss scaling (GPU only); auto: bf16
    on CUDA (an H100's tensor cores, no loss scale), fp32 on CPU (where bf16 is rarely faster)."""
    compile: bool = False
    """torch.compile the Transformer layers and the conv stack (static shapes: pretraining crops are
    rounded down to whole seconds, one compilation per length; model/compiled.py)."""
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


def load_layers(
    config_path: str | Path | None, overrides: list[str], kind: Kind = "pretrain"
) -> list[dict]:
    """The raw layers of a run: the YAML file or shipped `kind` config name (if any), then the
    `a.b=value` overrides."""
    layers = [load_yaml(find_config(config_path, kind))] if config_path else []
    if overrides:
        layers.append(parse_overrides(overrides))
    return layers


__all__ = ["AdamConfig", "TrainConfig", "load_layers"]
