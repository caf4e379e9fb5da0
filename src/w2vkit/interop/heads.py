"""`build(record, head=...)`: the module a `ModelRecord` becomes, by the name of its head.

A head builder takes a record and returns a module holding its weights. Three are built in:
- "pretraining": `Wav2Vec2Model` with the quantizer and projections (fresh ones when the record
  is an encoder-only import; `load_weights` says which tensors may be absent).
- "encoder": `Wav2Vec2Model` without the pretraining heads: what `extract_features` needs, from
  any record (a fine-tuned model's output layer is left out).
- "ctc": `Wav2Vec2ForCTC`, from a fine-tuned record.
Another objective registers its own (`register_head("hubert", build_hubert)`) without editing the
readers; a record's `kind` names the head `build` makes when none is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, overload

from torch import Tensor, nn

from w2vkit.config import ConfigError
from w2vkit.interop.native import PRETRAINING_HEADS, check_ctc_state, load_weights
from w2vkit.interop.record import ModelRecord
from w2vkit.model.ctc import Wav2Vec2ForCTC
from w2vkit.model.wav2vec2 import Wav2Vec2Model

HeadBuilder = Callable[[ModelRecord, str], nn.Module]
"""(record, source) -> the module, weights loaded; `source` names the file in error messages."""

HEADS: dict[str, HeadBuilder] = {}


def register_head(name: str, builder: HeadBuilder) -> None:
    if name in HEADS and HEADS[name] is not builder:
        raise ValueError(f"head {name!r} is registered already")
    HEADS[name] = builder


@overload
def build(
    record: ModelRecord, head: Literal["pretraining", "encoder"], *, source: str = ...
) -> Wav2Vec2Model: ...
@overload
def build(record: ModelRecord, head: Literal["ctc"], *, source: str = ...) -> Wav2Vec2ForCTC: ...
@overload
def build(record: ModelRecord, head: str | None = None, *, source: str = ...) -> nn.Module: ...
def build(record: ModelRecord, head: str | None = None, *, source: str = "the model") -> nn.Module:
    """The module for `record` with `head` (default: the record's own kind), in train mode."""
    name = head or record.kind
    if name not in HEADS:
        raise ConfigError(f"no model head {name!r}; heads: {', '.join(sorted(HEADS))}")
    return HEADS[name](record, source)


def _pretraining(record: ModelRecord, source: str) -> Wav2Vec2Model:
    model = Wav2Vec2Model(record.cfg)
    load_weights(model, record.encoder_state(), source=source)
    if record.normalize is not None:
        model.normalize_input = record.normalize
    return model


def _encoder(record: ModelRecord, source: str) -> Wav2Vec2Model:
    model = Wav2Vec2Model(record.cfg)
    for head in ("quantizer", "target_proj", "context_proj"):
        setattr(model, head, None)  # unused by `extract_features`
    load_encoder(model, record, source=source)
    if record.normalize is not None:
        model.normalize_input = record.normalize
    return model


def _ctc(record: ModelRecord, source: str) -> Wav2Vec2ForCTC:
    if record.kind != "ctc" or record.vocab is None:
        raise ConfigError(
            f"{source}: not a fine-tuned CTC model (a w2vkit finetune checkpoint or an HF "
            "Wav2Vec2ForCTC directory); fine-tune it first with w2vkit finetune"
        )
    check_ctc_state(record, source=source)
    model = Wav2Vec2ForCTC(
        record.cfg, len(record.vocab), final_dropout_prob=record.final_dropout_prob
    )
    model.load_state_dict(record.state_dict)
    if record.normalize is not None:
        model.wav2vec2.normalize_input = record.normalize
    return model


def load_encoder(encoder: Wav2Vec2Model, record: ModelRecord, *, source: str) -> None:
    """The encoder tensors of `record` into `encoder` (pretraining heads ignored), whose config may
    differ from the record's in dropout and masking (fine-tuning's overrides), not in shapes.

    A source that never masked (an HF encoder without `masked_spec_embed`) keeps the fresh mask
    embedding; any other missing or unknown tensor is an error naming it.
    """
    state: dict[str, Tensor] = {
        k: v for k, v in record.encoder_state().items() if not k.startswith(PRETRAINING_HEADS)
    }
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [
        k for k in missing if k != "masker.mask_embedding" and not k.startswith(PRETRAINING_HEADS)
    ]
    if missing or unexpected:
        raise ConfigError(
            f"{source}: encoder weights do not fit: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}"
        )


register_head("pretraining", _pretraining)
register_head("encoder", _encoder)
register_head("ctc", _ctc)

__all__ = ["HEADS", "HeadBuilder", "build", "load_encoder", "register_head"]
