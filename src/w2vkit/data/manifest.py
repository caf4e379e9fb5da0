"""fairseq-compatible audio manifests, plus a sidecar with each file's sample rate.

`train.tsv` is exactly fairseq's format (`examples/wav2vec/wav2vec_manifest.py`): line 1 is the
root directory, every other line `relative_path<TAB>num_frames`, where num_frames is the file's
own frame count (`soundfile.info(f).frames`, at the file's rate).

fairseq's `FileAudioDataset` asserts exactly two columns per line, so the sample rate and channel
count cannot be extra columns. They go in a sidecar, `train.meta.tsv`
(`relative_path<TAB>sample_rate<TAB>num_channels`, with a header line), keyed by path so that a
manifest cut with `head` or `grep` still finds its rows. fairseq never opens it. Without a sidecar
(a manifest made by fairseq) every file is assumed to be at 16 kHz, which is fairseq's own
assumption.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

META_HEADER = "path\tsample_rate\tnum_channels"
UNKNOWN_RATE = 0  # sample_rates value for a manifest row that has no sidecar row


@dataclass
class Manifest:
    """The rows of one manifest. `paths[i]` is relative to `root`."""

    root: Path
    paths: list[str]
    num_frames: np.ndarray  # (N,) int64, frames at the file's own rate
    sample_rates: np.ndarray | None = None  # (N,) int64 Hz, UNKNOWN_RATE where unknown
    num_channels: np.ndarray | None = None  # (N,) int64, 0 where unknown

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.num_frames = np.asarray(self.num_frames, dtype=np.int64)
        for name in ("sample_rates", "num_channels"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.asarray(value, dtype=np.int64))
                if len(value) != len(self.paths):
                    raise ValueError(f"{name} has {len(value)} rows, paths has {len(self.paths)}")
        if len(self.num_frames) != len(self.paths):
            raise ValueError(f"num_frames has {len(self.num_frames)} rows, paths {len(self.paths)}")

    def __len__(self) -> int:
        return len(self.paths)


def meta_path(manifest_path: str | os.PathLike) -> Path:
    """`dir/train.tsv` -> `dir/train.meta.tsv`."""
    path = Path(manifest_path)
    return path.with_name(path.name.removesuffix(".tsv") + ".meta.tsv")


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a fairseq manifest and, if present, its `.meta.tsv` sidecar."""
    path = Path(path)
    # surrogateescape: file names that are not valid UTF-8 still round-trip byte for byte.
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        root = f.readline().rstrip("\n")
        if not root:
            raise ValueError(f"{path}:1: expected the root directory on the first line")
        paths: list[str] = []
        num_frames: list[int] = []
        for line_number, line in enumerate(f, start=2):
            line = line.rstrip("\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not fields[1].isdigit():
                raise ValueError(
                    f"{path}:{line_number}: expected 'relative_path<TAB>num_frames', got {line!r}"
                )
            paths.append(fields[0])
            num_frames.append(int(fields[1]))
    manifest = Manifest(Path(root), paths, np.array(num_frames, dtype=np.int64))
    sidecar = meta_path(path)
    if sidecar.is_file():
        manifest.sample_rates, manifest.num_channels = _read_meta(sidecar, paths)
    return manifest


def _read_meta(path: Path, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rates and channels for `paths` from a sidecar; UNKNOWN_RATE / 0 for paths it lacks."""
    by_path: dict[str, tuple[int, int]] = {}
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        header = f.readline().rstrip("\n")
        if header != META_HEADER:
            raise ValueError(f"{path}:1: expected header {META_HEADER!r}, got {header!r}")
        for line_number, line in enumerate(f, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3 or not (fields[1].isdigit() and fields[2].isdigit()):
                raise ValueError(
                    f"{path}:{line_number}: expected 'path<TAB>sample_rate<TAB>num_channels', "
                    f"got {line.rstrip()!r}"
                )
            by_path[fields[0]] = (int(fields[1]), int(fields[2]))
    rows = np.array([by_path.get(p, (UNKNOWN_RATE, 0)) for p in paths], dtype=np.int64)
    rows = rows.reshape(len(paths), 2)
    return rows[:, 0], rows[:, 1]


def write_manifest(path: str | os.PathLike, manifest: Manifest) -> None:
    """Write `path` (fairseq format) and, when the manifest has sample rates, its sidecar.

    Files are written to a temporary name and renamed, so a reader never sees half a manifest.
    """
    path = Path(path)
    for p in manifest.paths:
        if "\t" in p or "\n" in p:
            raise ValueError(f"{path}: path {p!r} contains a tab or newline; TSV cannot hold it")
    _write_atomic(
        path,
        [str(manifest.root.resolve())]
        + [f"{p}\t{n}" for p, n in zip(manifest.paths, manifest.num_frames.tolist(), strict=True)],
    )
    if manifest.sample_rates is not None:
        channels = manifest.num_channels
        if channels is None:
            channels = np.zeros(len(manifest), dtype=np.int64)
        _write_atomic(
            meta_path(path),
            [META_HEADER]
            + [
                f"{p}\t{r}\t{c}"
                for p, r, c in zip(
                    manifest.paths, manifest.sample_rates.tolist(), channels.tolist(), strict=True
                )
            ],
        )


def _write_atomic(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        for line in lines:
            f.write(line)
            f.write("\n")
    os.replace(tmp, path)
