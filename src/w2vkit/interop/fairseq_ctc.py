"""fairseq fine-tuned checkpoints (`wav2vec_ctc`, e.g. `wav2vec_small_960h.pt`) -> a CTC `ModelRecord`.

fairseq stores the pretraining config as `cfg.model.w2v_args`, the fine-tuning values it applied
over it (dropout, masking, LayerDrop, gradient scale: `Wav2VecEncoder`'s `arg_overrides`) beside,
the encoder under `w2v_encoder.w2v_model.` without its pretraining heads, and the output layer as
`w2v_encoder.proj`, whose rows are the task's `Dictionary` indices: w2vkit's layout (blank 0).
The dictionary itself is not in the checkpoint: fairseq reads `dict.ltr.txt` from the data folder.
"""

from __future__ import annotations

from typing import Any

from w2vkit.config import ConfigError
from w2vkit.data.vocab import Vocabulary
from w2vkit.interop.fairseq import KEYS, config_from_fairseq, model_fields
from w2vkit.interop.record import ModelRecord
from w2vkit.interop.safe_load import to_plain

ENCODER_PREFIX = "w2v_encoder.w2v_model."
# Wav2VecEncoder's overrides of the pretraining config (fine-tuning name -> pretraining name).
OVERRIDES = {
    "dropout": "dropout",
    "activation_dropout": "activation_dropout",
    "attention_dropout": "attention_dropout",
    "dropout_input": "dropout_input",
    "layerdrop": "encoder_layerdrop",
    "feature_grad_mult": "feature_grad_mult",
    "mask_length": "mask_length",
    "mask_prob": "mask_prob",
    "mask_selection": "mask_selection",
    "mask_other": "mask_other",
    "no_mask_overlap": "no_mask_overlap",
    "mask_channel_length": "mask_channel_length",
    "mask_channel_prob": "mask_channel_prob",
    "mask_channel_before": "mask_channel_before",
    "mask_channel_selection": "mask_channel_selection",
    "mask_channel_other": "mask_channel_other",
    "no_mask_channel_overlap": "no_mask_channel_overlap",
}


def is_fairseq_ctc(payload: object) -> bool:
    cfg = to_plain(payload.get("cfg")) if isinstance(payload, dict) else None
    return isinstance(cfg, dict) and (cfg.get("model") or {}).get("_name") == "wav2vec_ctc"


def from_fairseq_ctc(payload: dict, vocab: Vocabulary, *, source: str) -> ModelRecord:
    """A loaded fairseq `wav2vec_ctc` checkpoint and its `dict.ltr.txt` -> a CTC `ModelRecord`."""
    cfg = to_plain(payload["cfg"])
    outer: dict[str, Any] = cfg["model"]
    inner = to_plain(outer.get("w2v_args"))
    if not isinstance(inner, dict):
        raise ConfigError(
            f"{source}: cfg.model.w2v_args is empty (fairseq fills it when it loads w2v_path); "
            "re-save the checkpoint with fairseq or fine-tune from the pretrained one"
        )
    fields, _, normalize = model_fields({"cfg": inner}, source=source)
    fields |= {ours: outer[theirs] for theirs, ours in OVERRIDES.items() if theirs in outer}
    try:
        model_cfg = config_from_fairseq(fields, where="cfg.model.w2v_args.model")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err
    weights = payload["model"]
    encoder = {
        k[len(ENCODER_PREFIX) :]: v for k, v in weights.items() if k.startswith(ENCODER_PREFIX)
    }
    state = {f"wav2vec2.{k}": v for k, v in KEYS.to_w2vkit(encoder, source=source).items()}
    state["lm_head.weight"] = weights["w2v_encoder.proj.weight"]
    state["lm_head.bias"] = weights["w2v_encoder.proj.bias"]
    if len(state["lm_head.bias"]) != len(vocab):
        raise ConfigError(
            f"{source}: the output layer has {len(state['lm_head.bias'])} rows, the dictionary "
            f"{len(vocab)} symbols (4 specials + {len(vocab) - 4}): not the dict it was trained with"
        )
    task = cfg.get("task") if isinstance(cfg.get("task"), dict) else {}
    normalize = task.get("normalize", normalize)
    return ModelRecord(
        cfg=model_cfg,
        state_dict=state,
        normalize=bool(normalize),
        vocab=vocab,
        kind="ctc",
        final_dropout_prob=float(outer.get("final_dropout", 0.0)),
    )


__all__ = ["from_fairseq_ctc", "is_fairseq_ctc"]
