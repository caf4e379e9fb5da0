"""A fairseq HuBERT checkpoint as a whole `HubertModel`: encoder and prediction head, to continue
its pretraining or compare with fairseq. (`w2vkit.load_model` reads the encoder alone.)"""

from __future__ import annotations

import os
from pathlib import Path

from w2vkit.interop.fairseq_hubert import is_hubert, read_hubert
from w2vkit.interop.safe_load import CheckpointError, load_torch_file
from w2vkit.pretrain.hubert.config import HubertConfig
from w2vkit.pretrain.hubert.model import HubertModel


def load_fairseq_hubert(path: str | os.PathLike) -> HubertModel:
    """Read without running code from the file (`safe_load`); every tensor must map."""
    checkpoint = load_torch_file(Path(path))
    if not is_hubert(checkpoint):
        raise CheckpointError(f"{path}: not a fairseq HuBERT checkpoint (cfg.model._name)")
    hubert = read_hubert(checkpoint, source=str(path))
    head = dict(hubert.head)
    label_rate = head.pop("label_rate")
    model = HubertModel(hubert.cfg, HubertConfig(**head), label_rate=label_rate)
    model.load_state_dict(hubert.state_dict, strict=True)
    if hubert.normalize is not None:
        model.normalize_input = hubert.normalize
    return model.eval()


__all__ = ["load_fairseq_hubert"]
