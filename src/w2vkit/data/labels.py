"""Label files keyed by the manifest's relative paths, read for probing.

- `frame_labels.tsv`: `relative/path.flac<TAB>sil sil h h e e ...`, one line per file, one
  space-separated label per 20 ms frame of the conv encoder's grid.
- `utterances.tsv`: a header `path<TAB>voice<TAB>sentence...`, then one row per file.

Errors name the file and line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

FRAME_LABELS = "frame_labels.tsv"
UTTERANCES = "utterances.tsv"


def _lines(path: str | os.PathLike) -> list[tuple[int, str]]:
    """(line number, line) of the non-blank lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} not found")
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_frame_labels(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{relative_path: (T,) labels}: int64 when every label of the file is an integer, else str."""
    rows: dict[str, list[str]] = {}
    for number, line in _lines(path):
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


def read_utterance_labels(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """{relative_path: {column: value}} from a TSV whose header starts with `path`."""
    lines = _lines(path)
    if not lines or lines[0][1].split("\t")[0] not in ("path", "relative_path"):
        raise ValueError(f"{path}:1: expected a header 'path<TAB>column...'")
    columns = lines[0][1].split("\t")[1:]
    rows: dict[str, dict[str, str]] = {}
    for number, line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != len(columns) + 1 or not all(f.strip() for f in fields):
            raise ValueError(
                f"{path}:{number}: expected {len(columns) + 1} non-empty tab-separated fields "
                f"(path, {', '.join(columns)}), got {line!r}"
            )
        if fields[0] in rows:
            raise ValueError(f"{path}:{number}: {fields[0]!r} is labelled twice")
        rows[fields[0]] = dict(zip(columns, (f.strip() for f in fields[1:]), strict=True))
    if not rows:
        raise ValueError(f"{path}: no labels")
    return rows
