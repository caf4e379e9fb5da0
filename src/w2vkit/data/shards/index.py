"""The index of a shard set: what batching, rank assignment and resume plan from, without
opening a shard.

A split's folder (`DEST/train/`) holds the shards `shard-000000.tar`, ... and two index files:
- `index.json`: `{"format": "w2vkit-shards", "version": 1, "labels": [...], "shards": [{"name",
  "items", "samples", "bytes", "sha256"}, ...]}`; `samples` is the audio frames of the shard's
  items (at each file's own rate), `labels` the label kinds its members' JSON carry.
- `items.npz`: per item, in shard order, `num_frames` (int64), `sample_rate` (int32) and
  `num_channels` (int16). An uncompressed NPZ: 7M items are ~100 MB and load in well under a
  second, where a JSON or TSV of them would take tens of seconds.

Item i of the split is member key `f"{i:09d}"` of its shard, so a member names its item (in a
glob of several shard sets, keys are shifted by the items of the sets before: `key_offset`).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from w2vkit.config import UsageError
from w2vkit.data.shards.fetch import fetch_bytes, is_url, local_path

FORMAT = "w2vkit-shards"
VERSION = 1
INDEX_NAME = "index.json"
ITEMS_NAME = "items.npz"
KEY_DIGITS = 9  # member keys are the item's index in the split, zero-padded


def item_key(index: int) -> str:
    return f"{index:0{KEY_DIGITS}d}"


@dataclass
class ShardIndex:
    """Shards and items of one split (of one or several shard sets, concatenated)."""

    urls: list[str]  # (S,) where each shard is read from
    sha256: list[str]  # (S,)
    num_bytes: np.ndarray  # (S,) int64
    shard_items: np.ndarray  # (S,) int64, items per shard
    num_frames: np.ndarray  # (N,) int64, at each file's rate
    sample_rates: np.ndarray  # (N,) int32
    num_channels: np.ndarray  # (N,) int16
    labels: list[str]
    key_offset: np.ndarray  # (S,) int64: item index = member key + key_offset[shard]

    @property
    def first_item(self) -> np.ndarray:
        """(S + 1,) int64: the items of shard s are first_item[s]:first_item[s + 1]."""
        return np.concatenate([[0], np.cumsum(self.shard_items)])

    def __len__(self) -> int:
        return len(self.num_frames)

    def fingerprint(self) -> str:
        """Names the data: a hash of every shard's sha256, in order (16 hex digits)."""
        return hashlib.sha256("\n".join(self.sha256).encode()).hexdigest()[:16]


def write_index(folder: Path, shards: list[dict], items: dict[str, np.ndarray], labels: list[str]):
    """Write `items.npz` then `index.json` (each through a temporary name and a rename)."""
    tmp = folder / (ITEMS_NAME + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **items)  # type: ignore[arg-type]  # numpy's stub mistypes **kwds
    os.replace(tmp, folder / ITEMS_NAME)
    document = {"format": FORMAT, "version": VERSION, "labels": labels, "shards": shards}
    tmp = folder / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, folder / INDEX_NAME)


def read_index(location: str, split: str, **fetch_options) -> ShardIndex:
    """The index of `split` under `location`: a folder, a glob of folders (their shard sets are
    concatenated, e.g. one per disk), or a URL (`file://`, `http(s)://`, `s3://`, `gs://`)."""
    if is_url(location):
        roots = [location.rstrip("/")]
    else:
        roots = sorted(glob.glob(location)) if glob.has_magic(location) else [location]
        if not roots:
            raise UsageError(f"data.shards={location} matches no folder")
    parts = [_read_one(f"{root}/{split}", **fetch_options) for root in roots]
    # Keys restart at 0 in every shard set: shift each set's keys past the sets before it.
    before = np.cumsum([0] + [len(p) for p in parts[:-1]])
    offsets = [p.key_offset + b for p, b in zip(parts, before, strict=True)]
    if len({tuple(p.labels) for p in parts}) > 1:
        raise UsageError(f"data.shards={location}: the shard sets carry different labels")
    return ShardIndex(
        urls=[u for p in parts for u in p.urls],
        sha256=[h for p in parts for h in p.sha256],
        num_bytes=np.concatenate([p.num_bytes for p in parts]),
        shard_items=np.concatenate([p.shard_items for p in parts]),
        num_frames=np.concatenate([p.num_frames for p in parts]),
        sample_rates=np.concatenate([p.sample_rates for p in parts]),
        num_channels=np.concatenate([p.num_channels for p in parts]),
        labels=parts[0].labels,
        key_offset=np.concatenate(offsets),
    )


def _read_one(folder: str, **fetch_options) -> ShardIndex:
    where = f"{folder}/{INDEX_NAME}"
    if not is_url(folder) and not Path(where).is_file():
        raise UsageError(f"{where} does not exist: write the shards with `w2vkit shard`")
    try:
        document = json.loads(fetch_bytes(where, **fetch_options))
    except json.JSONDecodeError as err:
        raise UsageError(f"{where}: not a shard index ({err})") from err
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise UsageError(f'{where}: not a w2vkit shard index (no "format": "{FORMAT}")')
    if document.get("version") != VERSION:
        raise UsageError(f"{where}: index version {document.get('version')}, expected {VERSION}")
    shards = document["shards"]
    items_at = f"{folder}/{ITEMS_NAME}"
    path = local_path(items_at)
    source = path if path is not None else io.BytesIO(fetch_bytes(items_at, **fetch_options))
    with np.load(source, allow_pickle=False) as items:
        # As stored (int64, int32, int16): 7M items would copy 100 MB to widen them.
        num_frames = np.asarray(items["num_frames"], dtype=np.int64)
        sample_rates = items["sample_rate"]
        num_channels = items["num_channels"]
    shard_items = np.array([s["items"] for s in shards], dtype=np.int64)
    if int(shard_items.sum()) != len(num_frames):
        raise UsageError(
            f"{where} lists {int(shard_items.sum())} items but {ITEMS_NAME} has {len(num_frames)}"
        )
    return ShardIndex(
        urls=[f"{folder}/{s['name']}" for s in shards],
        sha256=[s["sha256"] for s in shards],
        num_bytes=np.array([s["bytes"] for s in shards], dtype=np.int64),
        shard_items=shard_items,
        num_frames=num_frames,
        sample_rates=sample_rates,
        num_channels=num_channels,
        labels=list(document.get("labels", [])),
        key_offset=np.zeros(len(shards), dtype=np.int64),
    )
