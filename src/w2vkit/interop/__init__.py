"""Checkpoint interop: the one place that turns a file into weights.

`read_model(path)` reads any supported format into a `ModelRecord` (config, w2vkit state dict,
input normalisation, vocabulary, kind): w2vkit pretraining and fine-tuning checkpoints, fairseq
pretraining `.pt` and `wav2vec_ctc` `.pt` (+ its `dict.ltr.txt`), HF `Wav2Vec2ForPreTraining` /
`Wav2Vec2Model` / `Wav2Vec2ForCTC` directories. `build(record, head=...)` makes the module;
`load_model(path)` (`w2vkit.load_model`) does both. `save_w2vkit` / `hf.save_hf` /
`hf_ctc.save_hf_ctc` write records. Nothing is ever unpickled without an allowlist (`safe_load`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, overload

import torch
from torch import nn

from w2vkit.config import ConfigError
from w2vkit.data.vocab import Vocabulary
from w2vkit.interop import fairseq, fairseq_ctc, fairseq_hubert, hf, hf_ctc
from w2vkit.interop.heads import HEADS, build, register_head
from w2vkit.interop.native import from_payload, is_w2vkit_checkpoint, load_weights, save_w2vkit
from w2vkit.interop.record import ModelRecord
from w2vkit.interop.safe_load import CheckpointError, load_torch_file
from w2vkit.model.ctc import Wav2Vec2ForCTC
from w2vkit.model.wav2vec2 import Wav2Vec2Model

FORMATS = ("w2vkit", "fairseq", "hf")


def detect_format(path: str | os.PathLike) -> str:
    """'hf' for a directory or a `.safetensors` file, else 'w2vkit' or 'fairseq' from the
    checkpoint's top-level keys."""
    return _read(Path(path), None)[0]


def read_model(
    path: str | os.PathLike, *, dict_path: str | os.PathLike | None = None
) -> ModelRecord:
    """Any supported checkpoint -> `ModelRecord`. `dict_path`: the `dict.ltr.txt` of a fairseq
    fine-tuned model (default: beside the file); no other format uses it."""
    return _read(Path(path), Path(dict_path) if dict_path else None)[1]


@overload
def load_model(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    *,
    head: Literal["pretraining", "encoder"],
    dict_path: str | os.PathLike | None = None,
) -> Wav2Vec2Model: ...
@overload
def load_model(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    *,
    head: Literal["ctc"],
    dict_path: str | os.PathLike | None = None,
) -> Wav2Vec2ForCTC: ...
@overload
def load_model(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    *,
    head: str | None = None,
    dict_path: str | os.PathLike | None = None,
) -> nn.Module: ...
def load_model(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    *,
    head: str | None = None,
    dict_path: str | os.PathLike | None = None,
) -> nn.Module:
    """The model in `path` (any format `read_model` reads), in eval mode, on `device`.

    `head`: "pretraining" (`Wav2Vec2Model` with quantizer and projections, fresh ones for an
    encoder-only checkpoint), "encoder" (`Wav2Vec2Model` without them) or "ctc"
    (`Wav2Vec2ForCTC`); default: what the file holds ("ctc" for a fine-tuned model, else
    "pretraining"). `model.normalize_input` is the input normalisation the checkpoint records,
    else True for layer-norm extractors (HF's rule).
    """
    model = build(read_model(path, dict_path=dict_path), head, source=str(path))
    return model.to(device).eval() if device is not None else model.eval()


def refuse_run_directory(path: Path) -> None:
    """A `w2vkit pretrain/finetune` run directory given where a model is expected: name the
    checkpoint to give instead (an HF model directory has a config.json; a run directory not)."""
    saved = [path / name for name in ("checkpoint_best.pt", "checkpoint_last.pt")]
    choice = next((p for p in saved if p.is_file()), None)
    if choice is not None and not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path} is a training run directory: give one of its checkpoints, e.g. {choice}"
        )


def _read(path: Path, dict_path: Path | None) -> tuple[str, ModelRecord]:
    if path.is_dir():
        if not (path / "config.json").is_file():
            refuse_run_directory(path)
            raise CheckpointError(
                f"{path}: a directory without config.json is not an HF model directory"
            )
        # Without its tokenizer a Wav2Vec2ForCTC is read as an encoder (the output layer left out).
        if _is_hf_ctc(path / "config.json") and (path / "vocab.json").is_file():
            return "hf", hf_ctc.load_hf_ctc(path)
        return "hf", hf.load_hf(path)
    if path.suffix == ".safetensors" and path.is_file():
        if not (path.parent / "config.json").is_file():
            raise CheckpointError(
                f"{path}: a bare safetensors file needs the HF config.json that describes it "
                "next to it"
            )
        return "hf", hf.load_hf(path.parent, weights=path)
    payload = load_torch_file(path)
    if is_w2vkit_checkpoint(payload):
        return "w2vkit", from_payload(payload, source=str(path))
    if fairseq_ctc.is_fairseq_ctc(payload):
        dict_path = dict_path or path.with_name("dict.ltr.txt")
        if not dict_path.is_file():
            raise ConfigError(
                f"{path} is a fairseq fine-tuned model (wav2vec_ctc), which does not store its "
                f"dictionary: pass its dict.ltr.txt (--dict), {dict_path} does not exist"
            )
        vocab = Vocabulary.load(dict_path)
        return "fairseq", fairseq_ctc.from_fairseq_ctc(payload, vocab, source=str(path))
    if fairseq_hubert.is_hubert(payload):
        return "fairseq", fairseq_hubert.encoder_only(payload, source=str(path))
    if isinstance(payload, dict) and "model" in payload and ("cfg" in payload or "args" in payload):
        return "fairseq", fairseq.from_checkpoint(payload, source=str(path))
    keys = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
    raise CheckpointError(
        f"{path}: neither a w2vkit checkpoint ('model' + 'config') nor a fairseq one "
        f"('model' + 'cfg' or 'args'); found {keys}"
    )


def _is_hf_ctc(config_path: Path) -> bool:
    """config.json names `Wav2Vec2ForCTC` (an unreadable one: False, the reader says why)."""
    try:
        architectures = json.loads(config_path.read_text()).get("architectures")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(architectures, list) and "Wav2Vec2ForCTC" in architectures


__all__ = [
    "FORMATS",
    "HEADS",
    "CheckpointError",
    "ModelRecord",
    "build",
    "detect_format",
    "load_model",
    "load_weights",
    "read_model",
    "refuse_run_directory",
    "register_head",
    "save_w2vkit",
]
