"""Frame labels beside the audio (HuBERT's targets): `<split>.<name>` files in the manifest folder.

A label file has one line per manifest row, space-separated integer labels at `label_rate` per
second (fairseq's `.km` layout). `FrameLabels.attach` crops each batch row's labels exactly as its
audio was cropped: audio samples [o, o + S) take labels [round(o r / sr), round(o r / sr) +
round(S r / sr)) as fairseq's `HubertDataset` does; then every row is cut to the shortest, so that
a batch holds no padding label (fairseq pads with its dictionary's pad symbol instead).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from w2vkit.config import UsageError
from w2vkit.data.collate import Batch

LENGTH_TOLERANCE_SECONDS = 0.1
"""A row whose labels cover its audio to within this is accepted (fairseq `label_rate` check)."""


@dataclass
class LabelledBatch(Batch):
    """A `Batch` with one (B, L) long tensor of frame labels per label set."""

    labels: list[torch.Tensor] | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> LabelledBatch:
        moved = super().to(device, non_blocking=non_blocking)
        return replace(
            moved, labels=[t.to(device, non_blocking=non_blocking) for t in self.labels or []]
        )

    def pin_memory(self) -> LabelledBatch:
        return replace(super().pin_memory(), labels=[t.pin_memory() for t in self.labels or []])


class FrameLabels:
    """The label sets of one split, indexed like its `AudioDataset` (kept rows only).

    Labels live in one int32 buffer with row offsets: no per-row Python objects for DataLoader
    workers to copy.
    """

    def __init__(
        self,
        paths: list[Path],
        manifest_rows: np.ndarray,
        num_samples: np.ndarray,
        *,
        label_rate: float,
        sample_rate: int,
    ) -> None:
        self.paths = paths
        self.label_rate = label_rate
        self.sample_rate = sample_rate
        self._sets = [
            _read(path, manifest_rows, num_samples, label_rate, sample_rate) for path in paths
        ]

    def row(self, label_set: int, index: int) -> np.ndarray:
        values, ends = self._sets[label_set]
        start = int(ends[index - 1]) if index > 0 else 0
        return values[start : ends[index]]

    def all_labels(self, label_set: int) -> np.ndarray:
        """Every label of every kept row of one set, concatenated. -> (N,) int32."""
        return self._sets[label_set][0]

    def attach(self, batch: Batch) -> LabelledBatch:
        """`batch` with its rows' labels, cropped in step with the audio (module docstring)."""
        if batch.offsets is None:
            raise ValueError("the batch does not say where its rows were cropped")
        ratio = self.label_rate / self.sample_rate
        size = int(round(batch.wav.shape[1] * ratio))
        labels = []
        for label_set in range(len(self._sets)):
            rows = []
            for index, offset in zip(batch.indices.tolist(), batch.offsets.tolist(), strict=True):
                start = int(round(offset * ratio))
                rows.append(self.row(label_set, index)[start : start + size])
            shortest = min(len(r) for r in rows)
            labels.append(torch.from_numpy(np.stack([r[:shortest] for r in rows]).astype(np.int64)))
        return LabelledBatch(**vars(batch), labels=labels)


def _read(
    path: Path,
    manifest_rows: np.ndarray,
    num_samples: np.ndarray,
    label_rate: float,
    sample_rate: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(values, row ends) of the kept rows of a label file; mismatches name file and line."""
    if not path.is_file():
        raise UsageError(
            f"{path} not found: write the labels with `w2vkit targets {path.parent}` "
            "(data.labels names the files <split>.<name>)"
        )
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    if len(lines) <= int(manifest_rows.max(initial=-1)):
        raise UsageError(
            f"{path}: {len(lines)} lines, but the manifest has more rows; label files have one "
            "line per manifest row"
        )
    rows = []
    for index, row in enumerate(manifest_rows.tolist()):
        try:
            values = np.array(lines[row].split(), dtype=np.int32)
        except ValueError:
            raise UsageError(f"{path}:{row + 1}: labels must be space-separated integers") from None
        expected = num_samples[index] * label_rate / sample_rate
        if abs(len(values) - expected) > LENGTH_TOLERANCE_SECONDS * label_rate:
            raise UsageError(
                f"{path}:{row + 1}: {len(values)} labels for {num_samples[index]} samples "
                f"(expected about {expected:.0f} at the label rate): wrong label_rate or file"
            )
        rows.append(values)
    ends = np.cumsum([len(r) for r in rows], dtype=np.int64)
    return np.concatenate(rows) if rows else np.zeros(0, np.int32), ends


def label_paths(manifest_dir: str | os.PathLike, split: str, names: list[str]) -> list[Path]:
    return [Path(manifest_dir) / f"{split}.{name}" for name in names]


__all__ = ["FrameLabels", "LabelledBatch", "label_paths"]
