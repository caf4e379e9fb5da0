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
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from w2vkit.config import UsageError

META_HEADER = "path\tsample_rate\tnum_channels"
UNKNOWN_RATE = 0  # sample_rates value for a manifest row that has no sidecar row
# Bounds on what a line may claim: far above any real file (2**40 frames is 2 years at 16 kHz),
# far below where int64 arithmetic on them (resampled lengths, batch budgets) could overflow.
MAX_FRAMES = 2**40
MAX_SAMPLE_RATE = 2**24
MAX_CHANNELS = 2**16
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() accepts '²', which int() refuses
_DATA_LINE = re.compile(r"[^\t]*\t[0-9]+")


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
    """Read a fairseq manifest and, if present, its `.meta.tsv` sidecar.

    Anything a run could trip over later is refused here, as a UsageError naming file and line: a
    folder or binary file given as a manifest, a missing or nonexistent root line, paths that
    leave the root, frame counts that are not whole numbers or not plausible.
    """
    path = Path(path)
    if path.is_dir():
        hint = f"; did you mean {path / 'train.tsv'}?" if (path / "train.tsv").is_file() else ""
        raise UsageError(f"{path} is a folder, not a manifest file{hint}")
    if not path.is_file():
        raise UsageError(f"manifest {path} does not exist")
    # surrogateescape: file names that are not valid UTF-8 still round-trip byte for byte.
    # newline="\n": a "\r" inside a name is part of it; a CRLF line end is stripped by _line.
    with open(path, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        root = _root_line(path, _line(f.readline()))
        paths: list[str] = []
        num_frames: list[int] = []
        for line_number, raw in enumerate(f, start=2):
            line = _line(raw)
            if not line:
                continue
            where = f"{path}:{line_number}"
            _refuse_binary(where, line)
            fields = line.split("\t")
            if len(fields) != 2:
                raise UsageError(
                    f"{where}: expected 'relative_path<TAB>num_frames', got {_excerpt(line)}"
                )
            paths.append(_relative_path(where, fields[0]))
            num_frames.append(_count(where, "num_frames", fields[1], MAX_FRAMES))
    manifest = Manifest(root, paths, np.array(num_frames, dtype=np.int64))
    sidecar = meta_path(path)
    if sidecar.is_file():
        manifest.sample_rates, manifest.num_channels = _read_meta(sidecar, paths)
    return manifest


def _line(raw: str) -> str:
    return raw.removesuffix("\n").removesuffix("\r")


def _root_line(path: Path, line: str) -> Path:
    where = f"{path}:1"
    _refuse_binary(where, line)
    if not line:
        raise UsageError(f"{where}: expected the root directory on the first line")
    if _DATA_LINE.fullmatch(line):
        raise UsageError(
            f"{where}: expected the root directory on the first line, got what looks like a "
            f"data line ({_excerpt(line)}); add the folder the paths are relative to as line 1"
        )
    if not os.path.isdir(line):
        raise UsageError(f"{where}: the root directory {line!r} does not exist")
    return Path(line)


def _refuse_binary(where: str, line: str) -> None:
    # No text manifest holds a NUL byte (no path can); audio headers (RIFF, fLaC, OggS, ID3) do.
    if "\0" in line:
        raise UsageError(
            f"{where}: not a text manifest (binary data: an audio file?); a manifest is a .tsv "
            "written by `w2vkit manifest AUDIO_DIR --dest DIR`"
        )


def _relative_path(where: str, name: str) -> str:
    """`name` if it stays inside the root; absolute paths and `..` climbing out are refused."""
    normal = os.path.normpath(name)
    if os.path.isabs(name) or normal == ".." or normal.startswith(".." + os.sep):
        raise UsageError(
            f"{where}: path {_excerpt(name)} leaves the root directory; manifest paths must be "
            "relative to the root on line 1 and stay inside it"
        )
    return name


def _count(where: str, what: str, text: str, limit: int) -> int:
    """A non-negative whole number below `limit`, or a UsageError naming `where`."""
    if not _DIGITS.fullmatch(text):
        raise UsageError(f"{where}: {what} {_excerpt(text)} is not a whole number")
    value = int(text)
    if value >= limit:
        raise UsageError(f"{where}: {what} {text} is not plausible (not below {limit:,})")
    return value


def _excerpt(text: str, max_chars: int = 80) -> str:
    return repr(text if len(text) <= max_chars else text[:max_chars] + "...")


def _read_meta(path: Path, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rates and channels for `paths` from a sidecar; UNKNOWN_RATE / 0 for paths it lacks."""
    by_path: dict[str, tuple[int, int]] = {}
    with open(path, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        header = _line(f.readline())
        if header != META_HEADER:
            raise UsageError(f"{path}:1: expected header {META_HEADER!r}, got {_excerpt(header)}")
        for line_number, raw in enumerate(f, start=2):
            where = f"{path}:{line_number}"
            line = _line(raw)
            fields = line.split("\t")
            if len(fields) != 3:
                raise UsageError(
                    f"{where}: expected 'path<TAB>sample_rate<TAB>num_channels', "
                    f"got {_excerpt(line)}"
                )
            rate = _count(where, "sample_rate", fields[1], MAX_SAMPLE_RATE)
            by_path[fields[0]] = (rate, _count(where, "num_channels", fields[2], MAX_CHANNELS))
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
