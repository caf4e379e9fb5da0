"""Frame and utterance labels on the model's frame grid, and the files that hold them.

The grid: frame i of the conv encoder sees samples [i * stride, i * stride + width) of 16 kHz
audio (BASE, and every w2vkit preset: stride 320 = 20 ms, width 400 = 25 ms), and there are
exactly `output_lengths(num_samples)` frames. A frame's label is the label at its centre sample,
`i * stride + width // 2` (320 i + 200 for BASE).

Files (see docs/labels.md):
- frame labels, `{split}.phones.npz` / `{split}.pitch.npz`: one uncompressed NPZ per manifest with
  `paths` (N,) str, `offsets` (N + 1,) int64 and `labels` (sum of T,) int; utterance n's frames
  are `labels[offsets[n]:offsets[n + 1]]`. Class-name labels add `classes` (C,) str and store
  indices into it. No pickles: `np.load(allow_pickle=False)` reads every array.
- utterance labels, `{split}.utterances.tsv`: a header line `path<TAB>column...`, then one line
  per file, keyed by the manifest's relative path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from w2vkit.data.synth import PHONE_SILENCE, Phone
from w2vkit.model.config import BASE_CONV_LAYERS
from w2vkit.model.feature_extractor import frame_geometry, output_lengths

__all__ = [
    "PHONE_SILENCE",
    "frame_centres",
    "frame_count",
    "frame_phone_labels",
    "read_frame_labels",
    "read_utterance_labels",
    "write_frame_labels",
    "write_utterance_labels",
]

ConvLayers = Sequence[tuple[int, int, int]]


def frame_count(num_samples: int, conv_layers: ConvLayers = BASE_CONV_LAYERS) -> int:
    """Frames the conv encoder makes from `num_samples` samples (0 below one receptive field)."""
    return int(output_lengths(torch.tensor([num_samples]), list(conv_layers))[0])


def frame_centres(num_samples: int, conv_layers: ConvLayers = BASE_CONV_LAYERS) -> np.ndarray:
    """Centre sample of every frame: i * stride + width // 2. Shape: (T,) int64."""
    width, stride = frame_geometry(conv_layers)
    return np.arange(frame_count(num_samples, conv_layers), dtype=np.int64) * stride + width // 2


def frame_phone_labels(
    phones: Sequence[Phone], num_samples: int, conv_layers: ConvLayers = BASE_CONV_LAYERS
) -> np.ndarray:
    """The phone at each frame's centre; PHONE_SILENCE where no phone covers it. Shape: (T,) str.

    `phones` are [start, end) sample intervals in order (`synthesize_with_phones`), at the rate
    of `num_samples` (16 kHz for the model's grid).
    """
    centres = frame_centres(num_samples, conv_layers)  # (T,)
    if not phones:
        return np.full(len(centres), PHONE_SILENCE)
    starts = np.array([p.start for p in phones])  # (P,)
    ends = np.array([p.end for p in phones])
    if np.any(ends < starts) or np.any(starts[1:] < ends[:-1]):
        raise ValueError("phone intervals must be in order and must not overlap")
    names = np.array([p.name for p in phones] + [PHONE_SILENCE])  # index P = no phone
    index = np.searchsorted(starts, centres, side="right") - 1  # last phone starting at or before
    inside = (index >= 0) & (centres < ends[np.maximum(index, 0)])
    return names[np.where(inside, index, len(phones))]


def write_frame_labels(path: str | os.PathLike, labels: Mapping[str, np.ndarray]) -> None:
    """Write per-utterance frame labels (path -> (T,) str or int array) as one NPZ, in order."""
    arrays = [np.asarray(a) for a in labels.values()]
    if any(a.ndim != 1 for a in arrays):
        raise ValueError("frame labels must be one 1-D array per utterance")
    lengths = [len(a) for a in arrays]
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    content: dict[str, Any] = {"paths": np.array(list(labels), dtype=str), "offsets": offsets}
    if flat.dtype.kind == "U":
        content["classes"], flat = np.unique(flat, return_inverse=True)
    elif flat.dtype.kind not in "iu":
        raise ValueError(f"frame labels must be strings or integers, got dtype {flat.dtype}")
    content["labels"] = flat.astype(_smallest_int(flat))
    with open(path, "wb") as f:
        np.savez(f, **content)


def _smallest_int(values: np.ndarray) -> type:
    """int16 when every value fits (phone classes, pitch tokens), else int64."""
    limits = np.iinfo(np.int16)
    fits = not len(values) or (limits.min <= values.min() and values.max() <= limits.max)
    return np.int16 if fits else np.int64


def read_frame_labels(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Frame labels of every utterance in a `*.phones.npz` / `*.pitch.npz` file, in file order,
    or in a hand-written TSV (`relative/path.flac<TAB>sil sil h h ...`, one label per frame).

    Returns path (as in the manifest) -> (T,) array: class names (str) for phone labels, int64
    tokens for pitch labels (and for a TSV whose labels are all integers). T is the model's
    frame count for that file.
    """
    if os.fspath(path).endswith(".tsv"):
        return _read_frame_labels_tsv(Path(path))
    with np.load(path, allow_pickle=False) as data:
        missing = {"paths", "offsets", "labels"} - set(data.files)
        if missing:
            raise ValueError(
                f"{os.fspath(path)}: not a frame-label file, missing {sorted(missing)}"
            )
        paths, offsets, flat = data["paths"], data["offsets"], data["labels"]
        values = data["classes"][flat] if "classes" in data.files else flat.astype(np.int64)
    if len(offsets) != len(paths) + 1 or offsets[-1] != len(flat):
        raise ValueError(
            f"{os.fspath(path)}: {len(paths)} paths need {len(paths) + 1} offsets ending at "
            f"{len(flat)}, got {len(offsets)} ending at {offsets[-1] if len(offsets) else None}"
        )
    return {str(p): values[offsets[n] : offsets[n + 1]] for n, p in enumerate(paths)}


def _read_frame_labels_tsv(path: Path) -> dict[str, np.ndarray]:
    rows: dict[str, list[str]] = {}
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        relative, sep, labels = line.partition("\t")
        if not sep or not relative or not labels.split():
            raise ValueError(f"{path}:{number}: expected 'relative_path<TAB>label label ...'")
        if relative in rows:
            raise ValueError(f"{path}:{number}: {relative!r} is labelled twice")
        rows[relative] = labels.split()
    if not rows:
        raise ValueError(f"{path}: no labels")
    numeric = all(label.lstrip("-").isdigit() for labels in rows.values() for label in labels)
    return {p: np.array(v, dtype=np.int64 if numeric else str) for p, v in rows.items()}


def write_utterance_labels(
    path: str | os.PathLike, columns: Sequence[str], rows: Mapping[str, Sequence[object]]
) -> None:
    """Write `path<TAB>columns...` then one line per utterance (rows: path -> values)."""
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write("\t".join(["path", *columns]) + "\n")
        for name, values in rows.items():
            if len(values) != len(columns):
                raise ValueError(f"{name}: {len(values)} values for {len(columns)} columns")
            fields = [name, *(str(v) for v in values)]
            if any("\t" in v or "\n" in v for v in fields):
                raise ValueError(f"{name}: a label holds a tab or a newline: {fields}")
            f.write("\t".join(fields) + "\n")


def read_utterance_labels(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """A labels TSV with a header line (`path<TAB>column...`): path -> {column: value}, in order."""
    rows: dict[str, dict[str, str]] = {}
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        header = f.readline().rstrip("\n").split("\t")
        if len(header) < 2 or header[0] != "path":
            raise ValueError(
                f"{os.fspath(path)}:1: expected a header 'path<TAB>column...', got {header}"
            )
        for line_number, line in enumerate(f, start=2):
            fields = line.rstrip("\n").split("\t")
            if fields == [""]:
                continue
            if len(fields) != len(header):
                raise ValueError(
                    f"{os.fspath(path)}:{line_number}: {len(fields)} fields, the header has "
                    f"{len(header)}"
                )
            if fields[0] in rows:
                raise ValueError(f"{os.fspath(path)}:{line_number}: {fields[0]} appears twice")
            rows[fields[0]] = dict(zip(header[1:], fields[1:], strict=True))
    return rows
