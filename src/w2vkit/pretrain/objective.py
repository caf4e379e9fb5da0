"""What a pretraining objective gives the training session: one `PretrainObjective` per objective.

An objective is a sibling module of `wav2vec2.py` that builds one of these, plus its entry in
`registry.OBJECTIVES`. The session (`w2vkit.train.session.run`) needs nothing else of it:
- `config`: the run's config class, `PretrainConfig`'s sections plus the objective's own;
- `new_model`: the initial model from that config, holding every module the objective owns (an
  EMA teacher, a frozen quantizer or codebook as buffers or parameters without gradient), so that
  the device, DDP, checkpoints and exact resume take them along with nothing more to do;
- `objective`: the loop's `Objective` (step, summarize, and optionally validate, plan, and
  `after_update`, run after each optimizer step, e.g. an EMA update);
- `health`: the monitor of its health signatures (`w2vkit.train.diagnostics.Monitor` extended
  with the objective's own), which reads every train log line of a run and `w2vkit report`;
- `encoder`: the `Wav2Vec2Model` inside the model, which `--init-from` weights go into;
- `schedule`: the learning-rate schedule (default: polynomial decay after a linear warmup);
- `columns`: the console table; `best`: how the end summary words the best validation of
  `Objective.best_metric`; `next_command`: what the summary suggests running next.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.pretrain.config import PretrainConfig
from w2vkit.pretrain.schedule import PolynomialDecaySchedule
from w2vkit.train.diagnostics import Monitor
from w2vkit.train.metrics import Column
from w2vkit.train.state import Objective, Schedule


def polynomial_decay(optimizer: torch.optim.Optimizer, cfg: Any) -> Schedule:
    """fairseq's `polynomial_decay`; without a length (only `train.max_minutes` gives one) it stays
    flat after the warmup until the time budget's plan sets the length."""
    return PolynomialDecaySchedule(optimizer, cfg.optim, cfg.total_steps or sys.maxsize)


def layerdrop_or_frozen_extractor(cfg: Any) -> bool:
    """LayerDrop skips whole layers and grad_scale 0 runs the extractor without autograd: parameters
    without a gradient, which DDP must be told to expect."""
    return cfg.model.transformer.layerdrop_prob > 0 or cfg.model.feature_extractor.grad_scale == 0


def the_model(model: nn.Module) -> Wav2Vec2Model:
    """The model is the encoder (wav2vec 2.0: the encoder with its pretraining heads)."""
    if not isinstance(model, Wav2Vec2Model):
        raise TypeError(
            f"{type(model).__name__} is not a Wav2Vec2Model: give the objective an `encoder`"
        )
    return model


def extract_next(cfg: Any, model: Path, out_dir: Path) -> str:
    """The encoder's features of the training manifest: what a pretraining run is for."""
    manifest = Path(cfg.data.manifest_dir) / f"{cfg.data.train_split}.tsv"
    return f"w2vkit extract {model} {manifest} --out {out_dir / 'features'}"


@dataclass(frozen=True)
class PretrainObjective:
    """A pretraining objective as the session runs it (see the module docstring). The callables
    take the run's config, an instance of `config`."""

    name: str
    """The `objective:` value that selects it."""
    config: type[PretrainConfig]
    new_model: Callable[[Any], nn.Module]
    """Called after `torch.manual_seed(train.seed)`, the same on every rank."""
    objective: Callable[[Any], Objective]
    columns: tuple[Column, ...]
    health: Callable[[dict], Monitor | None] | None = None
    """(the run's config as config.yaml holds it) -> a fresh monitor of its health signatures
    (None: the config cannot say, e.g. it lacks the model)."""
    best: str = "valid loss  {:.4f} bits"
    """The summary's wording of the best `Objective.best_metric`, a format string."""
    next_command: Callable[[Any, Path, Path], str] = extract_next
    """(config, model checkpoint, run directory) -> the command to run next."""
    encoder: Callable[[nn.Module], Wav2Vec2Model] = the_model
    """The encoder in the model that `new_model` made (where `--init-from` weights go)."""
    schedule: Callable[[torch.optim.Optimizer, Any], Schedule] = polynomial_decay
    find_unused_parameters: Callable[[Any], bool] = layerdrop_or_frozen_extractor
    """Whether some parameters get no gradient in an update (DDP must be told)."""


__all__ = [
    "PretrainObjective",
    "extract_next",
    "layerdrop_or_frozen_extractor",
    "polynomial_decay",
    "the_model",
]
