"""HuBERT as the pretraining session runs it: `HUBERT`, its entry in `pretrain.registry`."""

from __future__ import annotations

from w2vkit.pretrain.hubert.config import HubertPretrainConfig
from w2vkit.pretrain.hubert.health import monitor_for
from w2vkit.pretrain.hubert.loss import hubert_objective
from w2vkit.pretrain.hubert.model import HubertModel
from w2vkit.pretrain.objective import PretrainObjective
from w2vkit.train.metrics import LOOP_COLUMNS, Column
from w2vkit.train.state import Objective

CONSOLE_COLUMNS = (
    Column("loss", "loss", ".3f"),
    Column("loss_m", "masked", ".3f"),
    Column("loss_u", "unmasked", ".3f"),
    Column("loss_pen", "penalty", ".3f"),
    Column("accuracy", "accuracy", ".3f"),
    Column("accuracy_u", "acc_unm", ".3f"),
    Column("label_ppl", "label_ppl", ".1f"),
    *LOOP_COLUMNS,
)
"""The console table of a HuBERT run (losses in bits per scored frame)."""


def _model(cfg: HubertPretrainConfig) -> HubertModel:
    return HubertModel(
        cfg.model, cfg.hubert, label_rate=cfg.data.label_rate, sample_rate=cfg.data.sample_rate
    )


def _objective(cfg: HubertPretrainConfig) -> Objective:
    return hubert_objective(cfg.hubert)


HUBERT = PretrainObjective(
    name="hubert",
    config=HubertPretrainConfig,
    new_model=_model,
    objective=_objective,
    columns=CONSOLE_COLUMNS,
    health=monitor_for,
)

__all__ = ["CONSOLE_COLUMNS", "HUBERT"]
