"""`ShardStream`: one reader (the training process, or one DataLoader worker) turning its planned
batches (`plan`) into `Batch`es, reading its shards in order, each once, whole.

A reader starting at batch j of its stream (a resumed run) skips the shards no batch from j on
needs. A shard is fetched (`prefetch` shards ahead, in threads), its size and sha256 checked
against the index, and the members of the items still to come kept until their batch is built.
Crops are drawn from (seed, epoch, rank, position), as in the manifest loader, *before*
decoding, so that a FLAC/WAV item at the target rate decodes only its cropped range.

Faults: a member that does not decode is dropped from its batch and counted (a batch left with
no row repeats this reader's previous batch, so every rank keeps its batch count); an
unreachable shard, after fetch's retries, stops the run or (on_error="skip") fails its items the
same way; a truncated shard or one whose sha256 differs always stops the run. A reader never
raises for these: it yields a `ShardFault`, which the training process raises as one line.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import IterableDataset, get_worker_info

from w2vkit.data.audio import DecodeError, decode_checked, normalize, to_mono
from w2vkit.data.collate import Batch, collate
from w2vkit.data.dataset import describe
from w2vkit.data.sampler import seeded_generator
from w2vkit.data.shards.fetch import ShardMismatch, ShardUnavailable, fetch_bytes
from w2vkit.data.shards.index import ShardIndex
from w2vkit.data.shards.plan import PlannedBatch, first_index, plan_epoch

SEEKABLE = ("flac", "wav")  # libsndfile seeks these sample-exactly


@dataclass
class ShardFault:
    """What stopped a reader; the training process raises `error` (one line, no traceback)."""

    error: Exception


@dataclass(kw_only=True)
class ShardBatch(Batch):
    """A `Batch` with each row's label from its member's JSON (`labels[i]`, None without)."""

    labels: list | None = None


@dataclass
class StreamSpec:
    """Everything a reader needs; plain data, inherited by (or pickled to) DataLoader workers."""

    index: ShardIndex
    batches: list[list[np.ndarray]]  # per shard, its batches (`plan.shard_batches`)
    num_samples: np.ndarray  # (N,) full length at sample_rate
    sizes: np.ndarray  # (N,) planned samples in a batch, at most
    sample_rate: int
    pad: bool
    normalize: bool
    random_crop: bool
    min_decoded_samples: int
    label: str  # the JSON field batches carry ("" for none)
    seed: int
    rank: int
    num_streams: int
    num_readers: int  # per rank: DataLoader workers, or 1
    shuffle: bool
    shuffle_buffer: int
    required_batch_size_multiple: int
    fetch: dict = field(default_factory=dict)  # fetch_bytes options (retries, timeout, cache)
    prefetch: int = 1
    skip_unreachable: bool = False

    def plan(self, epoch: int, readers: list[int]) -> dict[int, list[PlannedBatch]]:
        """This rank's `readers`' planned batches of `epoch`, by reader."""
        streams = [self.rank * self.num_readers + r for r in readers]
        plans = plan_epoch(
            self.batches,
            num_streams=self.num_streams,
            seed=self.seed,
            epoch=epoch,
            shuffle=self.shuffle,
            shuffle_buffer=self.shuffle_buffer,
            required_batch_size_multiple=self.required_batch_size_multiple,
            wanted=streams,
        )
        return {r: plans[s] for r, s in zip(readers, streams, strict=True)}


class ShardStream(IterableDataset):
    """Yields this reader's batches (or one `ShardFault`) from `start` = (epoch, position)."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.start = (0, 0)

    def __iter__(self) -> Iterator[ShardBatch | ShardFault]:
        info = get_worker_info()
        epoch, position = self.start
        spec = self.spec
        # The DataLoader asks its workers in turn, worker 0 first: worker 0 must hold position.
        reader = 0 if info is None else (info.id + position) % spec.num_readers
        plan = spec.plan(epoch, [reader])[reader]
        first = first_index(position, reader, spec.num_readers)
        members = _Members(spec, plan[first:])
        try:
            yield from self._batches(plan, first, reader, epoch, members)
        finally:
            members.pool.shutdown(wait=False, cancel_futures=True)

    def _batches(
        self, plan: list[PlannedBatch], first: int, reader: int, epoch: int, members: _Members
    ) -> Iterator[ShardBatch | ShardFault]:
        spec = self.spec
        previous: ShardBatch | None = None
        for j in range(first, len(plan)):
            batch_position = j * spec.num_readers + reader
            try:
                items = members.take(plan[j])
            except (ShardMismatch, ShardUnavailable) as err:
                yield ShardFault(err)
                return
            batch = _build(spec, items, epoch, batch_position)
            if batch is None:  # every row failed: keep the batch count, repeat the last batch
                if previous is None:
                    reasons = "; ".join(sorted(set(items.failures.values())))
                    yield ShardFault(RuntimeError(f"every item of a batch failed: {reasons}"))
                    return
                batch = replace(previous, failures={}, num_failed=0)
            batch.failures.update(items.failures)
            batch.num_failed += len(items.failures)
            batch.epoch, batch.position = epoch, batch_position
            previous = batch
            yield batch


@dataclass
class _Items:
    indices: list[int]
    audio: list[tuple[str, bytes]]  # (extension, bytes) per item
    labels: list
    failures: dict[int, str]


class _Members:
    """The members of the shards the planned batches need, fetched in reading order."""

    def __init__(self, spec: StreamSpec, plan: list[PlannedBatch]) -> None:
        self.spec = spec
        self.needed: dict[int, set[int]] = defaultdict(set)  # shard -> items still to come
        for planned in sorted(plan, key=lambda b: b.arrived):
            self.needed[planned.shard].update(planned.items.tolist())
        self.order = list(self.needed)  # first arrival order = reading order
        self.pool = ThreadPoolExecutor(max(1, spec.prefetch))
        self.pending: dict[int, Future] = {}
        self.next_fetch = 0
        self.read: set[int] = set()
        self.unreachable: dict[int, str] = {}
        self.members: dict[int, tuple[str, bytes, dict]] = {}

    def take(self, planned: PlannedBatch) -> _Items:
        while planned.shard not in self.read:
            self._read_next()
        items = _Items([], [], [], {})
        for index in planned.items.tolist():
            member = self.members.pop(index, None)
            if member is None:
                items.failures[index] = self.unreachable.get(
                    planned.shard, "missing from its shard"
                )
                continue
            ext, data, meta = member
            items.indices.append(index)
            items.audio.append((ext, data))
            items.labels.append(meta.get(self.spec.label) if self.spec.label else None)
        return items

    def _read_next(self) -> None:
        while self.next_fetch < len(self.order) and len(self.pending) < max(1, self.spec.prefetch):
            shard = self.order[self.next_fetch]
            self.pending[shard] = self.pool.submit(self._fetch, shard)
            self.next_fetch += 1
        shard = self.order[len(self.read)]
        try:
            data = self.pending.pop(shard).result()
        except ShardUnavailable as err:
            if not self.spec.skip_unreachable:
                raise
            self.unreachable[shard] = f"shard unreachable: {err}"
        else:
            self._unpack(shard, data)
        self.read.add(shard)

    def _fetch(self, shard: int) -> bytes:
        index = self.spec.index
        return fetch_bytes(
            index.urls[shard],
            sha256=index.sha256[shard],
            num_bytes=int(index.num_bytes[shard]),
            **self.spec.fetch,
        )

    def _unpack(self, shard: int, data: bytes) -> None:
        wanted = self.needed[shard]
        url = self.spec.index.urls[shard]
        offset = int(self.spec.index.key_offset[shard])
        audio: dict[int, tuple[str, bytes]] = {}
        metas: dict[int, dict] = {}
        view = memoryview(data)
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                for member in tar:
                    key, _, ext = member.name.partition(".")
                    if not key.isdigit() or int(key) + offset not in wanted:
                        continue
                    index = int(key) + offset
                    # The member's bytes in place: no copy through a tar file object.
                    member_bytes = view[member.offset_data : member.offset_data + member.size]
                    if ext != "json":
                        audio[index] = (ext, bytes(member_bytes))
                    elif self.spec.label:  # the JSON is only read for the labels
                        metas[index] = json.loads(bytes(member_bytes))
        except (tarfile.TarError, EOFError, json.JSONDecodeError) as err:
            raise ShardMismatch(f"{url}: not a readable tar shard ({err})") from err
        for index, (ext, payload) in audio.items():
            self.members[index] = (ext, payload, metas.get(index, {}))


def _build(spec: StreamSpec, items: _Items, epoch: int, position: int) -> ShardBatch | None:
    """Decode and collate the rows (cropped first); None when every row fails."""
    alive = list(range(len(items.indices)))
    while alive:
        generator = seeded_generator(spec.seed, epoch, spec.rank, position)
        limits = [int(spec.sizes[items.indices[k]]) for k in alive]
        target = max(limits) if spec.pad else min(limits)
        wavs = []
        for k, limit in zip(alive, limits, strict=True):
            index = items.indices[k]
            keep = min(limit, target)
            excess = int(spec.num_samples[index]) - keep
            start = 0
            if excess > 0 and spec.random_crop:
                start = int(torch.randint(0, excess + 1, (1,), generator=generator))
            try:
                wavs.append(_decode(spec, index, *items.audio[k], start, keep))
            except DecodeError as err:
                items.failures[index] = describe(err)
                alive.remove(k)
                break
        else:
            batch = collate(
                wavs, [items.indices[k] for k in alive], pad=spec.pad, random_crop=False
            )
            return ShardBatch(
                wav=batch.wav,
                padding_mask=batch.padding_mask,
                indices=batch.indices,
                labels=[items.labels[k] for k in alive] if spec.label else None,
            )
    return None


def _decode(spec: StreamSpec, index: int, ext: str, data: bytes, start: int, keep: int):
    """`keep` samples from `start` of an item at spec.sample_rate. Shape: (keep,) float32."""
    rate = int(spec.index.sample_rates[index])
    frames = int(spec.index.num_frames[index])
    if int(spec.num_samples[index]) < spec.min_decoded_samples:
        raise DecodeError(
            "too short", f"{spec.num_samples[index]} < {spec.min_decoded_samples} samples"
        )
    if ext in SEEKABLE and rate == spec.sample_rate and not spec.normalize:
        try:
            with sf.SoundFile(io.BytesIO(data)) as f:
                file_frames = f.frames
                f.seek(start)
                wav = to_mono(f.read(keep, dtype="float32", always_2d=True), rate, rate)
        except Exception as err:  # noqa: BLE001 (libsndfile's errors all mean a bad member)
            raise DecodeError("cannot decode") from err
        if file_frames < frames or len(wav) < keep:
            raise DecodeError("shorter than its index", f"{file_frames} of {frames} frames")
        if not np.isfinite(wav).all():
            raise DecodeError("non-finite samples", f"{int((~np.isfinite(wav)).sum())} NaN/Inf")
        return torch.from_numpy(wav)
    wav = decode_checked(
        io.BytesIO(data),
        spec.sample_rate,
        expected_frames=frames,
        min_samples=spec.min_decoded_samples,
    )
    if spec.normalize:
        wav = normalize(wav)
    return torch.from_numpy(wav[start : start + keep])
