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
import stat
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from w2vkit.checks import existing_folder, writable_folder
from w2vkit.config import UsageError
from w2vkit.data.audio import SAMPLE_RATE, probe_audio
from w2vkit.data.manifest import Manifest, meta_path, write_manifest

PROBE_CHUNK_FILES = 256  # files per task sent to a probing process
# Every format the README calls usable; libsndfile (>= 1.1) decodes each of them.
DEFAULT_EXTENSIONS = ("wav", "flac", "ogg", "mp3")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio_dir", type=Path, help="folder to scan (recursively)")
    parser.add_argument("--dest", type=Path, required=True, help="output folder for the .tsv files")
    parser.add_argument(
        "--ext",
        default=",".join(DEFAULT_EXTENSIONS),
        help="comma-separated extensions to read, case-insensitive",
    )
    parser.add_argument(
        "--valid-percent",
        type=float,
        default=0.01,
        help="share of files that go to valid.tsv, as a fraction in [0, 1] like fairseq's "
        "(0.05 = 5%%); 0 writes no valid.tsv",
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
    root = existing_folder(args.audio_dir, "AUDIO_DIR")
    _check_valid_fraction(args.valid_percent)
    writable_folder(args.dest, "--dest")  # before any file is probed
    extensions = tuple(
        "." + e.strip().lower().lstrip(".") for e in args.ext.split(",") if e.strip()
    )
    scan = find_audio(root, extensions)
    paths, skipped = scan.paths, scan.unlistable
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

    splits = _split(kept, args.seed, args.valid_percent)
    _write(args.dest, root, splits, skipped)  # everything on disk before anything is printed
    for name, rows in splits.items():
        hours = sum(f / r for _, f, r, _ in rows) / 3600
        print(f"{name}.tsv: {len(rows)} files, {hours:.2f} h")
    _report(num_found, readable, skipped, scan.other_extensions, args.dest)
    if not readable:  # a file's contents are the user's to fix: exit 2, skipped.tsv says why
        raise UsageError(f"no readable audio ({', '.join(extensions)}) under {root}")
    for warning in _empty_split_warnings(splits, len(kept), args.valid_percent):
        print(f"w2vkit manifest: {warning}", file=sys.stderr)
    return 0


def _check_valid_fraction(fraction: float) -> None:
    if 1 < fraction <= 100:
        raise UsageError(
            f"--valid-percent {fraction:g}: it is a fraction, as in fairseq, not a percentage; "
            f"use {fraction / 100:g} for {fraction:g}%"
        )
    if not 0 <= fraction <= 1:
        raise UsageError(f"--valid-percent must be a fraction in [0, 1], got {fraction:g}")


def _split(
    kept: list[tuple[str, int, int, int]], seed: int, valid_fraction: float
) -> dict[str, list[tuple[str, int, int, int]]]:
    """Rows per manifest to write: always train (as fairseq), valid only when it has rows."""
    in_valid = [split_is_valid(p, seed, valid_fraction) for p, *_ in kept]
    splits = {"train": [row for row, v in zip(kept, in_valid, strict=True) if not v]}
    valid = [row for row, v in zip(kept, in_valid, strict=True) if v]
    if valid:
        splits["valid"] = valid
    return splits


def _write(dest: Path, root: Path, splits: dict, skipped: list[tuple[str, str]]) -> None:
    """The split manifests and skipped.tsv. A valid.tsv not written this time is removed, so
    that none from an earlier run is left behind."""
    dest.mkdir(parents=True, exist_ok=True)
    valid = dest / "valid.tsv"
    for path in (valid, meta_path(valid)):
        path.unlink(missing_ok=True)
    for name, rows in splits.items():
        write_manifest(dest / f"{name}.tsv", _to_manifest(root, rows))
    _write_skipped(dest / "skipped.tsv", skipped)


def _empty_split_warnings(splits: dict, num_kept: int, valid_fraction: float) -> list[str]:
    if not num_kept:  # every readable file was filtered out: skipped.tsv says why
        return ["no file passed the filters; train.tsv is empty (see skipped.tsv)"]
    if not splits["train"]:
        return [
            f"the training split is empty: all {num_kept} files drew valid; "
            "pass a smaller --valid-percent"
        ]
    if valid_fraction > 0 and "valid" not in splits:
        suggestion = min(0.5, max(0.05, 5 / num_kept))
        return [
            f"the validation split is empty: --valid-percent {valid_fraction:g} of {num_kept} "
            f"files drew none, so no valid.tsv was written and pretraining will run without "
            f"validation; for a validation split pass e.g. --valid-percent {suggestion:.2g}"
        ]
    return []


@dataclass
class Scan:
    """What `find_audio` found under a root."""

    paths: list[str]  # audio files with a wanted extension, relative to the root, sorted
    unlistable: list[tuple[str, str]]  # (folder + "/", reason) for folders that could not be listed
    other_extensions: Counter[str]  # extension ("" for none) -> files left out for it


def find_audio(root: Path, extensions: tuple[str, ...]) -> Scan:
    """Files under `root` ending in one of `extensions`, and what was left out.

    Names starting with a dot (files and folders) are skipped: editors', version control's and
    macOS's `._x.wav` companions are never audio. Symlinks are followed, but each real folder is
    walked once and each real file listed once: real paths are walked first and win, so a link
    into the tree adds nothing, a link out of it adds its files under the link's name, and a link
    cycle ends.
    """
    found: dict[str, str] = {}  # real path -> relative path
    walked: set[str] = set()  # real paths of walked folders
    links: list[str] = []  # symlinks met, resolved once every real entry is known
    unlistable: list[tuple[str, str]] = []
    other: Counter[str] = Counter()

    def keep_file(real: str, rel: str) -> None:
        if rel.lower().endswith(extensions):
            found.setdefault(real, rel)
        else:
            other[os.path.splitext(rel)[1].lower()] += 1

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
                    entries = sorted(
                        (e for e in it if not e.name.startswith(".")), key=lambda e: e.name
                    )
            except OSError as err:
                unlistable.append((rel_dir + "/", f"cannot list folder: {err.strerror}"))
                continue
            for entry in entries:
                rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
                if entry.is_symlink():
                    links.append(rel)
                elif entry.is_dir():
                    stack.append(rel)
                else:
                    keep_file(os.path.join(real_dir, entry.name), rel)

    walk("")
    while links:  # links met inside linked folders come round again
        pending, links[:] = sorted(links), []
        for rel in pending:
            if (root / rel).is_dir():
                walk(rel)
            else:  # a broken link is kept: probing reports it
                keep_file(os.path.realpath(root / rel), rel)
    return Scan(sorted(found.values()), unlistable, other)


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
            if not stat.S_ISREG(os.stat(full).st_mode):  # opening a named pipe waits for a writer
                results.append("not a regular file (a named pipe, socket or device)")
                continue
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
    counts = np.array([row[1:] for row in rows], dtype=np.int64).reshape(len(rows), 3)
    return Manifest(
        root=root.resolve(),
        paths=[row[0] for row in rows],
        num_frames=counts[:, 0],  # (N,) frames, sample rate, channels
        sample_rates=counts[:, 1],
        num_channels=counts[:, 2],
    )


def _write_skipped(path: Path, skipped: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write("path\treason\n")
        for name, reason in sorted(skipped):
            clean = name.replace("\t", "\\t").replace("\n", "\\n")
            f.write(f"{clean}\t{reason}\n")


def _report(num_found, readable, skipped, other_extensions: Counter[str], dest: Path) -> None:
    print(f"found {num_found} files, {len(readable)} readable")
    if other_extensions:
        ranked = sorted(other_extensions.items(), key=lambda item: (-item[1], item[0]))
        listing = ", ".join(f"{n} {ext or '(none)'}" for ext, n in ranked[:5])
        more = ", ..." if len(ranked) > 5 else ""
        print(
            f"left out {other_extensions.total()} files for their extension ({listing}{more}); "
            "--ext chooses the extensions read"
        )
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
