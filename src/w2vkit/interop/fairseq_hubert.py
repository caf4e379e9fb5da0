"""fairseq HuBERT checkpoints (`hubert_base_ls960.pt`, iteration checkpoints) -> w2vkit.

fairseq's `HubertModel` is wav2vec 2.0's encoder (same parameter names) with `final_proj` and
`label_embs_concat` for its head and no quantizer, so its config translates through the wav2vec
2.0 fields (`interop.fairseq`) plus four of its own. `read_hubert` returns the encoder with the
head's tensors and settings beside it; `encoder_only` is what `load_model` builds (the head has no
place in a `Wav2Vec2Model`). fairseq's label embeddings have one row per entry of its label
dictionary, whose first four entries are the special symbols <s>, <pad>, </s>, <unk>: a converted
head keeps all rows, so label i of a `.km` file is class i + 4 of such a head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from w2vkit.config import ConfigError
from w2vkit.interop.fairseq import DEFAULTS, KEYS, config_from_fairseq
from w2vkit.interop.keymap import KeyMap
from w2vkit.interop.native import check_state_dict
from w2vkit.interop.record import ModelRecord
from w2vkit.interop.safe_load import CheckpointError, to_plain
from w2vkit.model.config import ModelConfig

HEAD_FIELDS = ("label_rate", "untie_final_proj", "skip_masked", "skip_nomask")
"""HuBERT's own model fields; the rest are wav2vec 2.0's."""
HEAD_KEYS = ("label_embeddings", "context_proj.")
HUBERT_KEYS = KeyMap(
    [row for row in KEYS.rows if not row[1].startswith(("quantizer.", "target_proj."))]
    + [("label_embs_concat", "label_embeddings")]
)


@dataclass
class FairseqHubert:
    """A fairseq HuBERT checkpoint in w2vkit's names."""

    cfg: ModelConfig
    state_dict: dict[str, Tensor]
    """Encoder and head (`context_proj.*`, `label_embeddings`)."""
    head: dict[str, Any]
    """`label_rate`, `num_classes` (one entry: fairseq keeps no per-set split),
    `untie_final_proj`, `pred_masked_weight`, `pred_nomask_weight`, `feature_penalty_weight`."""
    normalize: bool | None


def is_hubert(checkpoint: Any) -> bool:
    cfg = to_plain(checkpoint.get("cfg")) if isinstance(checkpoint, dict) else None
    return isinstance(cfg, dict) and to_plain(cfg.get("model", {})).get("_name") == "hubert"


def read_hubert(checkpoint: dict, *, source: str) -> FairseqHubert:
    cfg = to_plain(checkpoint["cfg"])
    fields = dict(cfg["model"])
    fields.pop("_name", None)
    task = cfg.get("task") if isinstance(cfg.get("task"), dict) else {}
    criterion = cfg.get("criterion") if isinstance(cfg.get("criterion"), dict) else {}
    unknown = sorted(set(fields) - set(DEFAULTS) - set(HEAD_FIELDS))
    if unknown:
        raise ConfigError(
            f"{source}: cfg.model.{unknown[0]} is a fairseq HuBERT field w2vkit does not know"
        )
    wav2vec = {**DEFAULTS, "quantize_targets": False}
    wav2vec.update({k: v for k, v in fields.items() if k in DEFAULTS})
    try:
        model_cfg = config_from_fairseq(wav2vec, where="cfg.model")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err
    state = HUBERT_KEYS.to_w2vkit(checkpoint["model"], source=source)
    rate = fields.get("label_rate", task.get("label_rate"))
    if not isinstance(rate, (int, float)):
        rate = task.get("label_rate")
    if not isinstance(rate, (int, float)):
        raise ConfigError(f"{source}: cfg.model.label_rate is {rate!r}, not a number")
    labels = state.get("label_embeddings")
    if labels is None or "context_proj.weight" not in state:
        raise CheckpointError(
            f"{source}: a HuBERT checkpoint without its label embeddings or final_proj"
        )
    untie = bool(fields.get("untie_final_proj", False))
    heads = state["context_proj.weight"].shape[0] // model_cfg.final_dim
    if untie and heads != 1:
        raise ConfigError(
            f"{source}: {heads} label sets; the checkpoint does not record how its "
            f"{labels.shape[0]} label embeddings split between them"
        )
    weights = to_plain(criterion.get("loss_weights")) or [10.0]
    head = {
        "label_rate": float(rate),
        "num_classes": [int(labels.shape[0])],
        "untie_final_proj": untie,
        "pred_masked_weight": 0.0
        if fields.get("skip_masked")
        else float(criterion.get("pred_masked_weight", 1.0)),
        "pred_nomask_weight": 0.0
        if fields.get("skip_nomask")
        else float(criterion.get("pred_nomask_weight", 0.0)),
        "feature_penalty_weight": float(weights[0]),
    }
    normalize = task.get("normalize")
    return FairseqHubert(model_cfg, state, head, normalize if isinstance(normalize, bool) else None)


def encoder_only(checkpoint: dict, *, source: str) -> ModelRecord:
    """The encoder of a fairseq HuBERT checkpoint as a `ModelRecord` (no pretraining head)."""
    hubert = read_hubert(checkpoint, source=source)
    state = {k: v for k, v in hubert.state_dict.items() if not k.startswith(HEAD_KEYS)}
    check_state_dict(
        hubert.cfg,
        state,
        source=source,
        optional_prefixes=("quantizer.", "target_proj.", "context_proj."),
    )
    return ModelRecord(hubert.cfg, state, hubert.normalize)


__all__ = ["FairseqHubert", "HUBERT_KEYS", "encoder_only", "is_hubert", "read_hubert"]
