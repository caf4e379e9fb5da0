"""w2vkit's own checkpoint layout, and the rule for which tensors a checkpoint may lack.

A w2vkit checkpoint is a `torch.save` dict with `"model"` (state dict) and `"config"` (a plain dict
whose `"model"` entry is `w2vkit.config.to_dict(ModelConfig)`); the trainer adds optimizer and loop
state, which conversion ignores. A fine-tuning checkpoint's config also has `"vocab"` (the output
symbols, specials first) and its model an `lm_head`. `convert --to w2vkit` writes only the weights
and config, plus `"audio"` (`normalize`: whether the model expects per-utterance normalised input).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from w2vkit.config import ConfigError, from_dict, to_dict
from w2vkit.data.vocab import SPECIALS, Vocabulary
from w2vkit.interop.record import ENCODER_PREFIX, ModelRecord
from w2vkit.interop.safe_load import CheckpointError
from w2vkit.model.config import ModelConfig

if TYPE_CHECKING:
    from w2vkit.model.wav2vec2 import Wav2Vec2Model


def is_w2vkit_checkpoint(payload: object) -> bool:
    return (
        isinstance(payload, dict)
        and isinstance(payload.get("model"), dict)
        and isinstance(payload.get("config"), dict)
        and isinstance(payload["config"].get("model"), dict)
    )


def is_finetuned(payload: dict) -> bool:
    """A w2vkit fine-tuning checkpoint: its config has a `vocab` and its model an `lm_head`."""
    return isinstance(payload["config"].get("vocab"), list) and "lm_head.weight" in payload["model"]


def from_payload(payload: dict, *, source: str) -> ModelRecord:
    """A `ModelRecord` from an already loaded w2vkit checkpoint dict (validated)."""
    if not is_w2vkit_checkpoint(payload):
        raise CheckpointError(
            f"{source}: not a w2vkit checkpoint (needs 'model' and 'config'['model'])"
        )
    config = payload["config"]
    try:
        cfg = from_dict(ModelConfig, config["model"], where="model")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err
    audio: dict = payload["audio"] if isinstance(payload.get("audio"), dict) else {}
    data: dict = config["data"] if isinstance(config.get("data"), dict) else {}
    normalize = audio.get("normalize", data.get("normalize"))
    state = {k: v for k, v in payload["model"].items()}
    if payload["config"].get("objective") == "hubert":
        # A HuBERT run's prediction head has no wav2vec 2.0 counterpart: its encoder loads alone.
        state = {k: v for k, v in state.items() if not k.startswith(HUBERT_HEADS)}
    if is_finetuned(payload):
        return _finetuned(payload, cfg, state, normalize=bool(normalize), source=source)
    # A w2vkit file converted from an HF encoder-only model has no heads: it loads, not pretrains.
    check_state_dict(cfg, state, source=source, optional_prefixes=encoder_only_prefixes(cfg, state))
    return ModelRecord(cfg, state, normalize if isinstance(normalize, bool) else None)


def _finetuned(
    payload: dict, cfg: ModelConfig, state: dict[str, Tensor], *, normalize: bool, source: str
) -> ModelRecord:
    config = payload["config"]
    symbols = config["vocab"]
    if symbols[: len(SPECIALS)] != list(SPECIALS) or not all(isinstance(s, str) for s in symbols):
        raise CheckpointError(
            f"{source}: config.vocab must list the symbols after {', '.join(SPECIALS)}"
        )
    try:
        vocab = Vocabulary(symbols[len(SPECIALS) :])
    except ConfigError as err:
        raise CheckpointError(f"{source}: config.vocab: {err}") from err
    ctc: dict = config["ctc"] if isinstance(config.get("ctc"), dict) else {}
    final_dropout = ctc.get("final_dropout_prob", 0.0)
    if isinstance(final_dropout, bool) or not isinstance(final_dropout, (int, float)):
        raise CheckpointError(f"{source}: config.ctc.final_dropout_prob={final_dropout!r:.40}")
    if not 0 <= final_dropout < 1:
        raise CheckpointError(
            f"{source}: config.ctc.final_dropout_prob={final_dropout} not in [0, 1)"
        )
    record = ModelRecord(
        cfg, state, normalize, vocab=vocab, kind="ctc", final_dropout_prob=float(final_dropout)
    )
    check_ctc_state(record, source=source)
    return record


def check_ctc_state(record: ModelRecord, *, source: str) -> None:
    """A CTC record's encoder fits its config (pretraining heads absent) and its output layer has
    one row per vocabulary symbol."""
    encoder = record.encoder_state()
    check_state_dict(
        record.cfg, encoder, source=source, optional_prefixes=encoder_only_prefixes(record.cfg, {})
    )
    rows = len(record.vocab) if record.vocab is not None else 0
    expected = {
        "lm_head.weight": (rows, record.cfg.transformer.model_dim),
        "lm_head.bias": (rows,),
    }
    other = [k for k in record.state_dict if not k.startswith(ENCODER_PREFIX) and k not in expected]
    for key, shape in expected.items():
        tensor = record.state_dict.get(key)
        if tensor is None or tuple(tensor.shape) != shape:
            found = "missing" if tensor is None else f"shape {tuple(tensor.shape)}"
            raise CheckpointError(
                f"{source}: {key} is {found}; the model's config and its {rows}-symbol vocabulary "
                f"need {shape}"
            )
    if other:
        raise CheckpointError(f"{source}: unexpected tensors {', '.join(other[:6])}")


def save_w2vkit(record: ModelRecord, path: str | Path) -> None:
    """Write `record` as a w2vkit checkpoint (a fine-tuned one keeps its vocabulary)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config: dict = {"model": to_dict(record.cfg)}
    if record.kind == "ctc" and record.vocab is not None:
        config["vocab"] = record.vocab.symbols
        config["ctc"] = {"final_dropout_prob": record.final_dropout_prob}
    payload = {
        "model": {k: v.detach().cpu().contiguous() for k, v in record.state_dict.items()},
        "config": config,
    }
    if record.normalize is not None:
        payload["audio"] = {"normalize": record.normalize}
    torch.save(payload, path)


PRETRAINING_HEADS = ("quantizer.", "target_proj.", "context_proj.")
HUBERT_HEADS = ("label_embeddings", "context_proj.")


def encoder_only_prefixes(cfg: ModelConfig, state: dict[str, Tensor]) -> tuple[str, ...]:
    """Tensors an encoder-only checkpoint (HF `Wav2Vec2Model`/`ForCTC`) may lack: all pretraining
    heads (a head present in part is damage, not a format), and the mask embedding when the model
    never masks (HF then keeps none)."""

    def present(prefixes: tuple[str, ...]) -> bool:
        return any(key.startswith(prefixes) for key in state)

    optional: tuple[str, ...] = () if present(PRETRAINING_HEADS) else PRETRAINING_HEADS
    never_masks = cfg.masking.time_prob == 0 and cfg.masking.channel_prob == 0
    if never_masks and not present(("masker.",)):
        optional += ("masker.",)
    return optional


def load_weights(model: Wav2Vec2Model, state: dict[str, Tensor], *, source: str) -> list[str]:
    """Copy `state` into `model`; the one place that decides which tensors a checkpoint may lack.

    Every key and shape of `model` must be in `state`, except what `encoder_only_prefixes`
    allows (a whole pretraining head, or the mask embedding of a model that never masks): those
    keep the values `model` has. Returns their keys (empty when every tensor was loaded).
    """
    check_state_dict(
        model.cfg, state, source=source, optional_prefixes=encoder_only_prefixes(model.cfg, state)
    )
    missing, _ = model.load_state_dict(state, strict=False)  # unexpected keys: none, checked above
    return missing


def check_state_dict(
    cfg: ModelConfig,
    state: dict[str, Tensor],
    *,
    source: str,
    optional_prefixes: tuple[str, ...] = (),
) -> None:
    """Keys and shapes must equal those of `Wav2Vec2Model(cfg)`; keys under `optional_prefixes`
    (heads a format may lack, e.g. an HF `Wav2Vec2Model` has no quantizer) may be missing."""
    from w2vkit.model.wav2vec2 import Wav2Vec2Model

    with torch.device("meta"):  # shapes only, no memory or init cost
        expected = {k: tuple(v.shape) for k, v in Wav2Vec2Model(cfg).state_dict().items()}
    missing = [k for k in expected if k not in state and not k.startswith(optional_prefixes)]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(v.shape)} (model expects {expected[k]})"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:6])}" + (" ..." if len(missing) > 6 else ""))
    if unexpected:
        problems.append(
            f"unexpected {', '.join(unexpected[:6])}" + (" ..." if len(unexpected) > 6 else "")
        )
    if wrong:
        problems.append(f"wrong shape {', '.join(wrong[:4])}")
    if problems:
        raise CheckpointError(
            f"{source}: weights do not fit the model its config describes: " + "; ".join(problems)
        )
