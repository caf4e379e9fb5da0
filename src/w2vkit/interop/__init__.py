"""Checkpoint interop: fairseq `.pt`, HF transformers directories and w2vkit checkpoints.

`load_pretrained(path)` reads any of the three (format auto-detected) into w2vkit's config and
parameter names; `save_w2vkit` / `save_hf` write them. Nothing is ever unpickled without an
allowlist (see `safe_load`).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from w2vkit.interop import fairseq, hf
from w2vkit.interop.native import Pretrained, from_payload, is_w2vkit_checkpoint, save_w2vkit
from w2vkit.interop.safe_load import CheckpointError, load_torch_file
from w2vkit.model.config import ModelConfig

FORMATS = ("w2vkit", "fairseq", "hf")


def detect_format(path: str | Path) -> str:
    """'hf' for a directory, else 'w2vkit' or 'fairseq' from the checkpoint's top-level keys."""
    return _read(Path(path))[0]


def read_pretrained(path: str | Path) -> Pretrained:
    """Any supported checkpoint -> `Pretrained` (config, w2vkit state dict, input normalisation)."""
    return _read(Path(path))[1]


def load_pretrained(path: str | Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Config and state dict for `Wav2Vec2Model(cfg).load_state_dict(state)`, from any format.

    An HF `Wav2Vec2Model` directory has no pretraining heads: its state dict lacks the
    `quantizer.*`, `target_proj.*` and `context_proj.*` keys (load with strict=False and keep the
    freshly initialised heads). Every other key is present and checked against the config.
    """
    pretrained = read_pretrained(path)
    return pretrained.cfg, pretrained.state_dict


def _read(path: Path) -> tuple[str, Pretrained]:
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"{path}: a directory without config.json is not an HF model directory"
            )
        return "hf", hf.load_hf(path)
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
    "detect_format",
    "load_pretrained",
    "read_pretrained",
    "save_w2vkit",
]
