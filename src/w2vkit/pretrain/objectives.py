"""The objectives beside wav2vec 2.0 that `w2vkit pretrain` runs (`objective: data2vec2 | best_rq`):
for each, the model, the loop's Objective with its health monitor, and the console columns."""

from __future__ import annotations

import dataclasses

from w2vkit.data.collate import Batch
from w2vkit.model.best_rq import BestRQModel
from w2vkit.model.data2vec2 import Data2Vec2Model
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.pretrain.best_rq import best_rq_objective
from w2vkit.pretrain.data2vec2 import data2vec2_objective
from w2vkit.pretrain.health import BestRQHealth, Data2Vec2Health
from w2vkit.train.config import PretrainConfig
from w2vkit.train.metrics import LOOP_COLUMNS, Column
from w2vkit.train.state import Objective

COLUMNS = {
    "data2vec2": (
        Column("loss", "loss", ".4f"),
        Column("target_var", "target_var", ".3f"),
        Column("pred_var", "pred_var", ".3f"),
        Column("ema_decay", "ema_decay", ".5f"),
        *LOOP_COLUMNS,
    ),
    "best_rq": (
        Column("loss", "loss", ".3f"),
        Column("accuracy", "accuracy", ".3f"),
        Column("code_perplexity", "code_ppl", ".1f"),
        Column("top_code_frac", "top_code", ".3f"),
        *LOOP_COLUMNS,
    ),
}
"""Console columns of each objective (data2vec 2.0's loss per masked frame, BEST-RQ's in nats)."""

LOSS_UNIT = {"wav2vec2": "bits", "data2vec2": "per masked frame", "best_rq": "nats"}


def initial_model(cfg: PretrainConfig) -> Wav2Vec2Model:
    """The initial model of `cfg.objective` (its parameters draw from torch's global generator)."""
    if cfg.objective == "data2vec2":
        return Data2Vec2Model(cfg.model, cfg.data2vec2)
    if cfg.objective == "best_rq":
        return BestRQModel(cfg.model, cfg.best_rq)
    return Wav2Vec2Model.from_config(cfg.model)


def build_objective(cfg: PretrainConfig) -> Objective[Batch]:
    """The loop's Objective of `cfg.objective` (data2vec2 or best_rq), health monitor included."""
    health: Data2Vec2Health | BestRQHealth
    if cfg.objective == "data2vec2":
        objective = data2vec2_objective(cfg.data2vec2, nominal_steps=cfg.total_steps)
        health = Data2Vec2Health()
    elif cfg.objective == "best_rq":
        objective, health = best_rq_objective(), BestRQHealth()
    else:
        raise ValueError(f"no objective module for {cfg.objective!r}")
    return dataclasses.replace(
        objective, monitor=lambda record: [f.format() for f in health.observe(record)]
    )


__all__ = ["COLUMNS", "LOSS_UNIT", "initial_model", "build_objective"]
