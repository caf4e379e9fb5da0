"""Helpers of the fault-injection suite: a small corpus, a tiny `w2vkit pretrain` run, its log.

Import as `import fault_runs` (pytest puts tests/faults/ on sys.path). Not named `runs`: `make demo`
writes a runs/ folder at the repository root, which ruff would then file as this first-party module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
from test_train_loop import TINY_YAML, make_manifest

from w2vkit import cli
from w2vkit.data.manifest import read_manifest, write_manifest

__all__ = ["TINY_YAML", "make_manifest", "pretrain", "records", "replace_audio", "tiny_args"]


def tiny_args(manifest_dir: Path, out_dir: Path, *overrides: str) -> list[str]:
    """`w2vkit pretrain` on the tiny model: 1 s crops, batches of up to 4 rows, logs every update."""
    return [
        "pretrain",
        TINY_YAML,
        f"data.manifest_dir={manifest_dir}",
        f"train.out_dir={out_dir}",
        "data.min_samples=1000",
        "data.max_samples=8000",
        "data.max_batch_samples=32000",
        "train.log_interval=1",
        "train.save_interval_steps=0",
        "train.validate_interval_steps=0",
        "optim.warmup_steps=2",
        "optim.total_steps=20",
        *overrides,
    ]


def pretrain(manifest_dir: Path, out_dir: Path, *overrides: str) -> int:
    return cli.main(tiny_args(manifest_dir, out_dir, *overrides))


def records(out_dir: Path, split: str = "train") -> list[dict]:
    """The run's JSON log records of `split` (strict JSON: NaN/Infinity would raise)."""
    lines = (out_dir / "train_log.jsonl").read_text().splitlines()
    parsed = [json.loads(line, parse_constant=_refuse) for line in lines]
    return [r for r in parsed if r.get("split") == split]


def _refuse(name: str):
    raise ValueError(f"not strict JSON: {name}")


def replace_audio(
    manifest_tsv: Path,
    row: int,
    wav: np.ndarray,
    subtype: str = "PCM_16",
    frames: int | None = None,
) -> Path:
    """Overwrite the file of manifest row `row` with `wav` at 16 kHz. The manifest is unchanged,
    or lists `frames` for the row if given (as if the file had been listed like that)."""
    manifest = read_manifest(manifest_tsv)
    path = manifest.root / manifest.paths[row]
    sf.write(path, wav, 16_000, subtype=subtype)
    if frames is not None:
        manifest.num_frames[row] = frames
        write_manifest(manifest_tsv, manifest)
    return path
