"""What a `w2vkit pretrain` run needs to train HuBERT: the model, the objective with its health
monitor, and the console columns (the recipe chooses them by `objective: hubert`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from w2vkit.data.frame_labels import FrameLabels
from w2vkit.pretrain.hubert.config import HubertPretrainConfig
from w2vkit.pretrain.hubert.health import cluster_balance
from w2vkit.pretrain.hubert.loss import hubert_objective
from w2vkit.pretrain.hubert.model import HubertModel
from w2vkit.train.diagnostics import HealthMonitor
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


def hubert_model(
    cfg: HubertPretrainConfig, init_state: dict | None, notes: list[str]
) -> HubertModel:
    """The initial model, the same on every rank; `--init-from` weights fill the encoder (the
    prediction head starts afresh unless the source is a HuBERT model of the same classes)."""
    torch.manual_seed(cfg.train.seed)
    model = HubertModel(
        cfg.model, cfg.hubert, label_rate=cfg.data.label_rate, sample_rate=cfg.data.sample_rate
    )
    if init_state is not None:
        own = model.state_dict()
        usable = {k: v for k, v in init_state.items() if k in own and v.shape == own[k].shape}
        model.load_state_dict(usable, strict=False)
        fresh = [k for k in own if k not in usable]
        if fresh:
            notes.append(
                f"--init-from has no usable {', '.join(fresh[:6])}"
                f"{' ...' if len(fresh) > 6 else ''}: left at their initial values"
            )
    return model


def objective(cfg: HubertPretrainConfig, labels: FrameLabels | None) -> Objective:
    """HuBERT's Objective; its monitor adds the label balance of the training labels (`labels`)
    to the run's first log record, then the generic findings (gradients, data, loss at chance)."""
    num_classes = cfg.hubert.num_classes[0]
    health = HealthMonitor(num_negatives=num_classes - 1, num_groups=0)
    pending = []
    if labels is not None:
        counts = np.bincount(labels.all_labels(0), minlength=num_classes)[:num_classes]
        finding = cluster_balance(counts, source=str(labels.paths[0]))
        if finding is not None:
            pending.append(finding.format())

    def monitor(record: dict[str, Any]) -> list[str]:
        messages = pending.copy()
        pending.clear()
        return messages + [f.format() for f in health.observe(record)]

    return dataclasses.replace(hubert_objective(cfg.hubert), monitor=monitor)


__all__ = ["CONSOLE_COLUMNS", "hubert_model", "objective"]
