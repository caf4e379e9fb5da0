"""Write a manifest's audio as tar shards in the WebDataset layout, and check them.

Per item two members, `KEY.EXT` (the file's own bytes when it is FLAC, WAV, OGG or MP3, else a
FLAC encoding of it) and `KEY.json` (`num_frames`, `sample_rate`, `num_channels`, `source`: the
path relative to the manifest's root, and the item's labels when the manifest has them). Items are
sorted longest first before they are cut into shards, so a shard holds items of close lengths and
batches built inside one shard waste little to cropping or padding.

Tar headers carry no time, owner or mode that varies, so the same manifest gives byte-identical
shards: a killed run continues where it stopped (finished shards are kept, not rewritten) and
the sha256 of a shard is reproducible.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from w2vkit.config import UsageError
from w2vkit.data.audio import SAMPLE_RATE
from w2vkit.data.manifest import UNKNOWN_RATE, Manifest
from w2vkit.data.shards.index import INDEX_NAME, item_key, write_index

ORIGINAL_FORMATS = ("flac", "wav", "ogg", "mp3")  # stored as they are; anything else -> FLAC
PLAN_NAME = "plan.json"
_SIZE = re.compile(r"([0-9]*\.?[0-9]+)\s*(b|kb|mb|gb|tb|h|min|s)", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "h": 3600, "min": 60, "s": 1}


@dataclass(frozen=True)
class ShardSize:
    """A shard is closed before it passes `limit` bytes of audio files or seconds of audio."""

    limit: float
    by_seconds: bool


def parse_shard_size(text: str) -> ShardSize:
    """`256MB`, `1GB`, `500kB` (bytes of audio files) or `2h`, `30min`, `600s` (audio)."""
    match = _SIZE.fullmatch(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise UsageError(
            f"--shard-size {text!r}: expected a positive size in bytes (256MB, 1GB) or in audio "
            "time (2h, 30min, 600s)"
        )
    unit = match.group(2).lower()
    return ShardSize(float(match.group(1)) * _UNITS[unit], unit in ("h", "min", "s"))


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: which manifest rows, as which items."""

    path: Path
    root: Path
    rows: tuple[int, ...]  # manifest rows, in member order
    first_item: int
    sources: tuple[str, ...]  # relative paths
    labels: tuple[dict, ...]  # per item, what goes into its JSON besides the audio fields
    frames: tuple[int, ...]
    rates: tuple[int, ...]
    channels: tuple[int, ...]


def plan_shards(
    manifest: Manifest, size: ShardSize, item_labels: list[dict], dest: Path
) -> list[ShardJob]:
    """Rows sorted longest first (stable: manifest order among equals), cut into shards."""
    rates = manifest.sample_rates
    if rates is None:
        rates = np.full(len(manifest), UNKNOWN_RATE, dtype=np.int64)
    rates = np.where(rates == UNKNOWN_RATE, SAMPLE_RATE, rates)  # fairseq's assumption
    channels = manifest.num_channels
    if channels is None:
        channels = np.zeros(len(manifest), dtype=np.int64)
    seconds = manifest.num_frames / rates
    order = np.argsort(-seconds, kind="stable")
    if size.by_seconds:
        weight = seconds[order]
    else:
        weight = np.array([_file_size(manifest.root / manifest.paths[r]) for r in order], float)
    jobs: list[ShardJob] = []
    start = 0
    while start < len(order):
        total = np.cumsum(weight[start:])
        # At least one item; then every item that keeps the shard within the limit.
        end = start + max(1, int(np.searchsorted(total, size.limit, side="right")))
        rows = order[start:end].tolist()
        jobs.append(
            ShardJob(
                path=dest / f"shard-{len(jobs):06d}.tar",
                root=manifest.root,
                rows=tuple(rows),
                first_item=start,
                sources=tuple(manifest.paths[r] for r in rows),
                labels=tuple(item_labels[r] for r in rows),
                frames=tuple(int(manifest.num_frames[r]) for r in rows),
                rates=tuple(int(rates[r]) for r in rows),
                channels=tuple(int(channels[r]) for r in rows),
            )
        )
        start = end
    return jobs


def plan_digest(jobs: list[ShardJob], labels: list[str]) -> str:
    """What a finished shard must agree with for a resumed `shard` run to keep it."""
    digest = hashlib.sha256(json.dumps(labels).encode())
    for job in jobs:
        digest.update(f"{job.path.name}\0{job.first_item}\0".encode())
        digest.update("\0".join(job.sources).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def write_shard(job: ShardJob) -> dict:
    """Write `job.path` (through a temporary name) unless it exists; its index row."""
    if not job.path.is_file():
        tmp = job.path.with_name(job.path.name + ".tmp")
        with (
            open(tmp, "wb") as f,
            tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tar,
        ):
            for i in range(len(job.rows)):
                key = item_key(job.first_item + i)
                ext, audio = _audio_member(job.root / job.sources[i])
                meta = {
                    "num_frames": job.frames[i],
                    "sample_rate": job.rates[i],
                    "num_channels": job.channels[i],
                    "source": job.sources[i],
                    **job.labels[i],
                }
                _add(tar, f"{key}.{ext}", audio)
                _add(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode())
        os.replace(tmp, job.path)
    return {
        "name": job.path.name,
        "items": len(job.rows),
        "samples": int(sum(job.frames)),
        "bytes": job.path.stat().st_size,
        "sha256": sha256_file(job.path),
    }


def finish(dest: Path, jobs: list[ShardJob], rows: list[dict], labels: list[str]) -> None:
    """The split's index, once every shard is written."""
    items: dict[str, np.ndarray] = {
        "num_frames": np.array([f for j in jobs for f in j.frames], dtype=np.int64),
        "sample_rate": np.array([r for j in jobs for r in j.rates], dtype=np.int32),
        "num_channels": np.array([c for j in jobs for c in j.channels], dtype=np.int16),
    }
    write_index(dest, rows, items, labels)


def check_plan(dest: Path, digest: str) -> None:
    """Refuse to mix shards of another plan into `dest`; record this plan for a later resume."""
    plan = dest / PLAN_NAME
    if plan.is_file():
        if json.loads(plan.read_text(encoding="utf-8")).get("digest") != digest:
            raise UsageError(
                f"{dest} holds shards of another manifest or --shard-size ({plan} differs): "
                "write to an empty --out, or delete its shards first"
            )
        return
    if any(dest.glob("shard-*.tar")) or (dest / INDEX_NAME).is_file():
        raise UsageError(f"{dest} holds shards without a {PLAN_NAME}: write to an empty --out")
    dest.mkdir(parents=True, exist_ok=True)
    plan.write_text(json.dumps({"digest": digest}) + "\n", encoding="utf-8")


def verify_shard(path: Path, row: dict) -> str | None:
    """None when `path` matches its index row (size, sha256, members), else what is wrong."""
    if not path.is_file():
        return f"{path}: missing"
    if path.stat().st_size != row["bytes"]:
        return f"{path}: {path.stat().st_size} bytes, the index says {row['bytes']}"
    if sha256_file(path) != row["sha256"]:
        return f"{path}: sha256 differs from the index"
    try:
        with tarfile.open(path, mode="r|") as tar:
            keys = {m.name.split(".", 1)[0] for m in tar}
    except (tarfile.TarError, EOFError) as err:
        return f"{path}: not a readable tar ({err})"
    if len(keys) != row["items"]:
        return f"{path}: {len(keys)} items, the index says {row['items']}"
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as err:
        raise UsageError(f"{path}: listed in the manifest but unreadable ({err})") from err


def _audio_member(path: Path) -> tuple[str, bytes]:
    """(extension, bytes): the file as it is in a format every reader decodes, else FLAC."""
    ext = path.suffix.lower().lstrip(".")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UsageError(f"{path}: listed in the manifest but unreadable ({err})") from err
    if ext in ORIGINAL_FORMATS:
        return ext, data
    try:
        wav, rate = sf.read(io.BytesIO(data), dtype="int32", always_2d=True)
    except Exception:  # noqa: BLE001 (undecodable: stored as it is, counted when training reads it)
        return ext or "bin", data
    out = io.BytesIO()
    sf.write(out, wav, rate, format="FLAC", subtype="PCM_24")
    return "flac", out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))
