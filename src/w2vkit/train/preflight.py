"""Checks on a training run's inputs (pretraining or fine-tuning), made before anything is built.

Each problem a newcomer meets first (no manifest folder, a split that is empty or whose files are
all too short, an output folder that is a file, tensorboard asked for but not installed) is a
`UsageError` naming the config key and what to do, instead of a traceback from deep inside the
run minutes later. A validation split that cannot make a batch only switches validation off.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Protocol, TypeVar

from w2vkit.checks import existing_folder, writable_folder
from w2vkit.config import UsageError
from w2vkit.data.dataset import AudioDataset
from w2vkit.data.manifest import read_manifest
from w2vkit.train.config import TrainConfig

MAKE_MANIFEST = "w2vkit manifest AUDIO_DIR --dest DIR"


class _Data(Protocol):
    shards: str
    manifest_dir: str
    train_split: str
    valid_split: str
    sample_rate: int
    min_samples: int


class _RunConfig(Protocol):
    @property
    def data(self) -> _Data: ...
    @property
    def train(self) -> TrainConfig: ...


Config = TypeVar("Config", bound=_RunConfig)


def check_run(cfg: Config) -> tuple[Config, list[str]]:
    """`cfg`, with validation switched off when no valid item can make a batch, and notes to log.

    Any run config with a `data` section in fairseq's manifest layout and a `train` section."""
    notes: list[str] = []
    data = cfg.data
    if data.shards:  # the loaders check the shard index (it may be remote)
        return _check_out(cfg), notes
    folder = _manifest_folder(data.manifest_dir, data.train_split)
    train = folder / f"{data.train_split}.tsv"
    if not train.is_file():
        raise UsageError(
            f"data.manifest_dir={folder} has no {train.name} (data.train_split="
            f"{data.train_split}); write one with `{MAKE_MANIFEST}`"
        )
    problem = _unusable(train, data)
    if problem:
        raise UsageError(f"{problem}: there is nothing to train on")
    valid = folder / f"{data.valid_split}.tsv"
    if data.valid_split:
        problem = _unusable(valid, data) if valid.is_file() else f"{valid} does not exist"
        if problem:
            notes.append(f"{problem}: training without validation (data.valid_split= says so)")
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(data, valid_split=""))  # type: ignore[type-var]
    return _check_out(cfg), notes


def _check_out(cfg: Config) -> Config:
    writable_folder(cfg.train.out_dir, "train.out_dir")
    if cfg.train.tensorboard:
        _check_tensorboard()
    return cfg


def _unusable(path: Path, data: _Data) -> str | None:
    """Why no item of the manifest at `path` can make a batch, or None if some can."""
    if path.stat().st_size == 0:
        return f"{path} is empty"
    manifest = read_manifest(path)
    if not len(manifest):
        return f"{path} lists no audio files"
    if not len(AudioDataset(manifest, sample_rate=data.sample_rate, min_samples=data.min_samples)):
        return (
            f"all {len(manifest)} files in {path} are shorter than data.min_samples="
            f"{data.min_samples} ({data.min_samples / data.sample_rate:g} s); lower it, or "
            "use longer files"
        )
    return None


def _manifest_folder(manifest_dir: str, train_split: str) -> Path:
    if not manifest_dir:
        raise UsageError(
            f"data.manifest_dir is not set: point it at the folder with train.tsv ({MAKE_MANIFEST})"
        )
    path = Path(manifest_dir)
    hint = ""
    if path.is_file() and path.suffix == ".tsv":  # the manifest itself rather than its folder
        hint = f"; did you mean data.manifest_dir={path.parent}"
        if path.stem != train_split:
            hint += f" data.train_split={path.stem}"
        hint += "?"
    return existing_folder(path, "data.manifest_dir", hint=hint)


def _check_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401  (the logger imports it later, once the run has started)
    except ImportError:
        raise UsageError(
            "train.tensorboard=true needs the tensorboard package: pip install tensorboard "
            "(or set train.tensorboard=false)"
        ) from None
