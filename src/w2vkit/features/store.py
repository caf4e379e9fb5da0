"""The features directory `w2vkit extract` writes, and its readers (layout: `features.extract`).

Shards are safetensors files written whole under a temporary name and renamed, as is every text
file here, so a reader never sees half a file.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
INDEX_HEADER = "relative_path\tshard\tkey\tnum_frames\tlayers"
SKIPPED_HEADER = "relative_path\treason"
DEFAULT_SHARD_BYTES = 256 * 2**20


@dataclass(frozen=True)
class IndexRow:
    relative_path: str
    shard: str
    key: str
    num_frames: int
    layers: tuple[int, ...]


class ShardWriter:
    """Collects tensors and writes a shard each time about `shard_bytes` have accumulated."""

    def __init__(self, out_dir: Path, shard_bytes: int, metadata: dict[str, str]) -> None:
        if shard_bytes < 1:
            raise ValueError(f"shard_bytes must be >= 1, got {shard_bytes}")
        self.out_dir = out_dir
        self.shard_bytes = shard_bytes
        self.metadata = metadata
        self.num_shards = 0
        self.pending: dict[str, Tensor] = {}
        self.pending_bytes = 0

    @property
    def current_name(self) -> str:
        return f"features-{self.num_shards:05d}.safetensors"

    def add(self, key: str, tensor: Tensor) -> str:
        """Queue `tensor`; returns the shard file name it will be written to."""
        name = self.current_name
        self.pending[key] = tensor
        self.pending_bytes += tensor.numel() * tensor.element_size()
        if self.pending_bytes >= self.shard_bytes:
            self.flush()
        return name

    def flush(self) -> None:
        if not self.pending:
            return
        path = self.out_dir / self.current_name
        tmp = path.with_name(path.name + ".tmp")
        save_file(self.pending, str(tmp), metadata=self.metadata)
        os.replace(tmp, path)
        self.num_shards += 1
        self.pending, self.pending_bytes = {}, 0


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
    os.replace(tmp, path)


def read_index(out_dir: str | os.PathLike) -> list[IndexRow]:
    """The rows of `out_dir/index.tsv`; errors name the file and line."""
    path = Path(out_dir) / "index.tsv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: not a features directory (or `w2vkit extract` did not finish)"
        )
    lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    if not lines or lines[0] != INDEX_HEADER:
        raise ValueError(f"{path}:1: expected header {INDEX_HEADER!r}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        try:
            if len(fields) != 5:
                raise ValueError
            layers = tuple(int(k) for k in fields[4].split(","))
            rows.append(IndexRow(fields[0], fields[1], fields[2], int(fields[3]), layers))
        except ValueError:
            raise ValueError(
                f"{path}:{number}: expected '{INDEX_HEADER.replace(chr(9), '<TAB>')}', got {line!r}"
            ) from None
    return rows


def iter_features(out_dir: str | os.PathLike) -> Iterator[tuple[IndexRow, Tensor]]:
    """(row, tensor) for every stored item, in index order; one item in memory at a time.

    The tensor is `(L, T, D)`, or `(L, D)` for mean-pooled features, in the stored dtype.
    """
    out_dir = Path(out_dir)
    for shard, rows in itertools.groupby(read_index(out_dir), key=lambda row: row.shard):
        shard_path = out_dir / shard
        if not shard_path.is_file():
            raise FileNotFoundError(f"{shard_path} (listed in {out_dir / 'index.tsv'}) not found")
        with safe_open(str(shard_path), framework="pt") as handle:
            for row in rows:
                yield row, handle.get_tensor(row.key)


def load_features(out_dir: str | os.PathLike, layer: int | None = None) -> dict[str, Tensor]:
    """{relative_path: tensor} for all items: `(L, T, D)` / `(L, D)`, or one layer's `(T, D)` /
    `(D,)` when `layer` is given (a layer id, as in the `layers` column)."""
    features = {}
    for row, tensor in iter_features(out_dir):
        if layer is not None:
            if layer not in row.layers:
                raise ValueError(f"layer {layer} not stored for {row.relative_path}: {row.layers}")
            tensor = tensor[row.layers.index(layer)]
        features[row.relative_path] = tensor
    return features


__all__ = [
    "DEFAULT_SHARD_BYTES",
    "INDEX_HEADER",
    "SKIPPED_HEADER",
    "STORAGE_DTYPES",
    "IndexRow",
    "ShardWriter",
    "dtype_name",
    "iter_features",
    "load_features",
    "read_index",
    "write_text",
]
