"""Checkpoint interop: fairseq `.pt`, HF transformers directories and w2vkit checkpoints.

`load_model(path)` gives a ready `Wav2Vec2Model` from any of them (format auto-detected);
`read_pretrained(path)` the config, state dict (w2vkit names) and input normalisation it is built
from; `save_w2vkit` / `save_hf` write them. Nothing is ever unpickled without an allowlist (see
`safe_load`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from w2vkit.interop import fairseq, hf
from w2vkit.interop.native import (
    Pretrained,
    from_payload,
    is_w2vkit_checkpoint,
    load_weights,
    save_w2vkit,
)
from w2vkit.interop.safe_load import CheckpointError, load_torch_file
from w2vkit.model.config import ModelConfig
from w2vkit.model.wav2vec2 import Wav2Vec2Model

FORMATS = ("w2vkit", "fairseq", "hf")


def detect_format(path: str | os.PathLike) -> str:
    """'hf' for a directory or a `.safetensors` file, else 'w2vkit' or 'fairseq' from the
    checkpoint's top-level keys."""
    return _read(Path(path))[0]


def read_pretrained(path: str | os.PathLike) -> Pretrained:
    """Any supported checkpoint -> `Pretrained` (config, w2vkit state dict, input normalisation)."""
    return _read(Path(path))[1]


def load_pretrained(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Config and state dict from any format, keys and shapes checked against the config.

    An encoder-only checkpoint (HF `Wav2Vec2Model`) lacks the pretraining heads: `load_weights`
    (or `load_model`) puts such a state dict into a model and says which tensors it lacked.
    """
    pretrained = read_pretrained(path)
    return pretrained.cfg, pretrained.state_dict


def load_model(path: str | os.PathLike, device: str | torch.device | None = None) -> Wav2Vec2Model:
    """A `Wav2Vec2Model` in eval mode from any format `read_pretrained` reads, on `device`.

    Pretraining heads are loaded when the checkpoint has them; an encoder-only checkpoint gets
    freshly initialised ones (unused by `extract_features`). `model.normalize_input` is the
    input normalisation the checkpoint records, else True for layer-norm extractors (HF's rule).
    """
    model = build_model(read_pretrained(path), source=str(path))
    return model.to(device).eval() if device is not None else model.eval()


def build_model(pretrained: Pretrained, *, source: str) -> Wav2Vec2Model:
    """`Wav2Vec2Model(pretrained.cfg)` holding `pretrained`'s weights (see `load_weights`)."""
    model = Wav2Vec2Model(pretrained.cfg)
    load_weights(model, pretrained.state_dict, source=source)
    if pretrained.normalize is not None:
        model.normalize_input = pretrained.normalize
    return model


def refuse_run_directory(path: Path) -> None:
    """A `w2vkit pretrain/finetune` run directory given where a model is expected: name the
    checkpoint to give instead (an HF model directory has a config.json; a run directory not)."""
    saved = [path / name for name in ("checkpoint_best.pt", "checkpoint_last.pt")]
    choice = next((p for p in saved if p.is_file()), None)
    if choice is not None and not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path} is a training run directory: give one of its checkpoints, e.g. {choice}"
        )


def _read(path: Path) -> tuple[str, Pretrained]:
    if path.is_dir():
        if not (path / "config.json").is_file():
            refuse_run_directory(path)
            raise CheckpointError(
                f"{path}: a directory without config.json is not an HF model directory"
            )
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
    if isinstance(payload, dict) and "model" in payload and ("cfg" in payload or "args" in payload):
        return "fairseq", fairseq.from_checkpoint(payload, source=str(path))
    keys = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
    raise CheckpointError(
        f"{path}: neither a w2vkit checkpoint ('model' + 'config') nor a fairseq one "
        f"('model' + 'cfg' or 'args'); found {keys}"
    )


__all__ = [
    "CheckpointError",
    "FORMATS",
    "Pretrained",
    "build_model",
    "detect_format",
    "load_model",
    "load_pretrained",
    "load_weights",
    "read_pretrained",
    "refuse_run_directory",
    "save_w2vkit",
]
