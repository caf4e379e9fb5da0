"""`w2vkit manifest AUDIO_DIR --dest OUT_DIR`: scan a folder of audio into fairseq manifests.

Writes `train.tsv` / `valid.tsv` (fairseq `wav2vec_manifest.py` format), their `.meta.tsv`
sidecars (sample rate and channels, see `w2vkit.data.manifest`), and `skipped.tsv` listing every
file left out with the reason. Only headers are read, in parallel processes.

Differences from fairseq, on purpose: files are walked in sorted order and each file's split is
a hash of (seed, relative path), so the split depends on neither the filesystem's listing order
nor on which other files exist (adding files never moves old ones between train and valid).
Paths are relative to AUDIO_DIR as walked, so symlinked files and folders inside it keep their
names.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from w2vkit.data.audio import SAMPLE_RATE, probe_audio
from w2vkit.data.manifest import Manifest, write_manifest

PROBE_CHUNK_FILES = 256  # files per task sent to a probing process


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio_dir", type=Path, help="folder to scan (recursively)")
    parser.add_argument("--dest", type=Path, required=True, help="output folder for the .tsv files")
    parser.add_argument(
        "--ext",
        default="flac,wav",
        help="comma-separated, case-insensitive (ogg and mp3 work too: libsndfile decodes them)",
    )
    parser.add_argument(
        "--valid-percent",
        type=float,
        default=0.01,
        help="fraction (0..1, as fairseq) of files that go to valid.tsv; 0 writes no valid.tsv",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the train/valid split")
    parser.add_argument(
        "--path-must-contain",
        default=None,
        help="keep only files whose path relative to AUDIO_DIR contains this string",
    )
    parser.add_argument("--min-seconds", type=float, default=None, help="skip shorter files")
    parser.add_argument("--max-seconds", type=float, default=None, help="skip longer files")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="processes reading headers in parallel",
    )


def run(args: argparse.Namespace) -> int:
    root = Path(args.audio_dir)
    if not root.is_dir():
        print(f"w2vkit manifest: {root} is not a directory", file=sys.stderr)
        return 2
    if not 0.0 <= args.valid_percent <= 1.0:
        print(
            f"w2vkit manifest: --valid-percent must be in [0, 1], got {args.valid_percent}",
            file=sys.stderr,
        )
        return 2
    extensions = tuple(
        "." + e.strip().lower().lstrip(".") for e in args.ext.split(",") if e.strip()
    )
    paths, skipped = find_audio(root, extensions)
    if args.path_must_contain:
        paths = [p for p in paths if args.path_must_contain in p]
    num_found = len(paths)
    skipped += [(p, "name contains a tab or newline") for p in paths if "\t" in p or "\n" in p]
    paths = [p for p in paths if "\t" not in p and "\n" not in p]
    probes = probe_all(root, paths, workers=args.workers)

    readable: list[tuple[str, int, int, int]] = []  # (path, frames, rate, channels)
    for path, probe in zip(paths, probes, strict=True):
        if isinstance(probe, str):
            skipped.append((path, probe))
        elif probe[0] == 0:
            skipped.append((path, "no audio frames"))
        elif probe[1] <= 0:  # headerless formats can say so; nothing could resample the file
            skipped.append((path, "no sample rate in header"))
        else:
            readable.append((path, *probe))
    kept = []
    for path, frames, rate, channels in readable:
        seconds = frames / rate
        if args.min_seconds is not None and seconds < args.min_seconds:
            skipped.append(
                (path, f"shorter than --min-seconds {args.min_seconds} ({seconds:.3f} s)")
            )
        elif args.max_seconds is not None and seconds > args.max_seconds:
            skipped.append(
                (path, f"longer than --max-seconds {args.max_seconds} ({seconds:.3f} s)")
            )
        else:
            kept.append((path, frames, rate, channels))

    args.dest.mkdir(parents=True, exist_ok=True)
    in_valid = [split_is_valid(p, args.seed, args.valid_percent) for p, *_ in kept]
    splits = {"train": [row for row, v in zip(kept, in_valid, strict=True) if not v]}
    if args.valid_percent > 0:  # fairseq writes valid.tsv only then
        splits["valid"] = [row for row, v in zip(kept, in_valid, strict=True) if v]
    for name, rows in splits.items():
        write_manifest(args.dest / f"{name}.tsv", _to_manifest(root, rows))
        hours = sum(f / r for _, f, r, _ in rows) / 3600
        print(f"{name}.tsv: {len(rows)} files, {hours:.2f} h")
    _write_skipped(args.dest / "skipped.tsv", skipped)
    _report(num_found, readable, skipped, args.dest)
    if not readable:
        print(
            f"w2vkit manifest: no readable audio ({', '.join(extensions)}) under {root}",
            file=sys.stderr,
        )
        return 1
    return 0


def find_audio(root: Path, extensions: tuple[str, ...]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files under `root` ending in one of `extensions` (paths relative to `root`, sorted), and
    the folders that could not be listed, with the reason.

    Symlinks are followed, but each real folder is walked once and each real file listed once:
    real paths are walked first and win, so a link into the tree adds nothing, a link out of it
    adds its files under the link's name, and a link cycle ends.
    """
    found: dict[str, str] = {}  # real path -> relative path
    walked: set[str] = set()  # real paths of walked folders
    links: list[str] = []  # symlinks met, resolved once every real entry is known
    unlistable: list[tuple[str, str]] = []

    def walk(top: str) -> None:
        stack = [top]
        while stack:
            rel_dir = stack.pop()
            real_dir = os.path.realpath(root / rel_dir)
            if real_dir in walked:
                continue
            walked.add(real_dir)
            try:
                with os.scandir(root / rel_dir) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as err:
                unlistable.append((rel_dir + "/", f"cannot list folder: {err.strerror}"))
                continue
            for entry in entries:
                rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
                if entry.is_symlink():
                    links.append(rel)
                elif entry.is_dir():
                    stack.append(rel)
                elif entry.name.lower().endswith(extensions):
                    found.setdefault(os.path.join(real_dir, entry.name), rel)

    walk("")
    while links:  # links met inside linked folders come round again
        pending, links[:] = sorted(links), []
        for rel in pending:
            if (root / rel).is_dir():
                walk(rel)
            elif rel.lower().endswith(extensions):  # a broken link is kept: probing reports it
                found.setdefault(os.path.realpath(root / rel), rel)
    return sorted(found.values()), unlistable


def probe_all(root: Path, paths: list[str], *, workers: int) -> list[tuple[int, int, int] | str]:
    """(frames, sample_rate, channels) or the reason it cannot be read, for each path."""
    chunks = [paths[i : i + PROBE_CHUNK_FILES] for i in range(0, len(paths), PROBE_CHUNK_FILES)]
    results: list[tuple[int, int, int] | str] = []
    with tqdm(
        total=len(paths), unit="file", desc="reading headers", file=sys.stderr, disable=None
    ) as progress:
        if workers <= 1:
            mapped = (_probe_chunk(root, chunk) for chunk in chunks)
            for chunk_result in mapped:
                results += chunk_result
                progress.update(len(chunk_result))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for chunk_result in pool.map(_probe_chunk, [root] * len(chunks), chunks):
                    results += chunk_result
                    progress.update(len(chunk_result))
    return results


def _probe_chunk(root: Path, paths: list[str]) -> list[tuple[int, int, int] | str]:
    results: list[tuple[int, int, int] | str] = []
    prefix = os.path.join(root, "")  # plain strings: pathlib would add ~15 us per file
    for path in paths:
        full = prefix + path
        try:
            info = probe_audio(full)
            results.append((info.num_frames, info.sample_rate, info.num_channels))
        except Exception as err:  # noqa: BLE001 (whatever the reason, the file is unusable)
            results.append(_unreadable_reason(full, err))
    return results


def _unreadable_reason(path: str, err: Exception) -> str:
    try:
        if os.stat(path).st_size == 0:
            return "empty file (0 bytes)"
    except OSError as stat_err:
        return f"cannot open: {stat_err.strerror}"
    detail = err.error_string if isinstance(err, sf.LibsndfileError) else str(err)
    return f"not readable audio: {detail}"


def split_is_valid(path: str, seed: int, valid_fraction: float) -> bool:
    """True if `path` goes to valid: a uniform [0, 1) hash of (seed, path) below the fraction."""
    digest = hashlib.blake2b(f"{seed}\t{path}".encode("utf-8", "surrogateescape"), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2**64 < valid_fraction


def _to_manifest(root: Path, rows: list[tuple[str, int, int, int]]) -> Manifest:
    columns: list[tuple] = list(zip(*rows, strict=True)) if rows else [(), (), (), ()]
    return Manifest(
        root=root.resolve(),
        paths=list(columns[0]),
        num_frames=np.array(columns[1], dtype=np.int64),
        sample_rates=np.array(columns[2], dtype=np.int64),
        num_channels=np.array(columns[3], dtype=np.int64),
    )


def _write_skipped(path: Path, skipped: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write("path\treason\n")
        for name, reason in sorted(skipped):
            clean = name.replace("\t", "\\t").replace("\n", "\\n")
            f.write(f"{clean}\t{reason}\n")


def _report(num_found, readable, skipped, dest: Path) -> None:
    print(f"found {num_found} files, {len(readable)} readable")
    if skipped:
        reasons = Counter(reason.split(":")[0].split(" (")[0] for _, reason in skipped)
        detail = "; ".join(f"{n} {r}" for r, n in reasons.most_common())
        print(f"skipped {len(skipped)} files ({detail}); see {dest / 'skipped.tsv'}")
    else:
        print("skipped 0 files")
    rates = Counter(rate for _, _, rate, _ in readable)
    other = {r: n for r, n in rates.items() if r != SAMPLE_RATE}
    if other:
        listing = ", ".join(f"{n} at {r} Hz" for r, n in sorted(other.items()))
        print(
            f"{sum(other.values())} files are not at {SAMPLE_RATE} Hz ({listing}): w2vkit "
            "resamples them when loading; fairseq's own FileAudioDataset would reject them"
        )
    multi = sum(channels > 1 for *_, channels in readable)
    if multi:
        print(f"{multi} files have more than one channel: their channels are averaged to mono")
