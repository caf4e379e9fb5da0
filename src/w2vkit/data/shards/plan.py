"""Which batches every rank and DataLoader worker builds in an epoch, in which order.

Everything comes from the index and (seed, epoch), so every rank computes the same plan without
talking to the others, and a resumed run recomputes exactly the plan it was killed in:

1. Batches are made inside each shard, once: its items longest first (the writer already stored
   them so), cut by fairseq's greedy rule (`batch_starts`: rows x longest <= max_batch_samples,
   a row count below or a multiple of required_batch_size_multiple). As with fairseq's
   `batch_by_size` on distinct lengths, the batches are the same every epoch; their order is not.
2. The shards are shuffled from (seed, epoch) and dealt to the streams, one per (rank, worker):
   each shard goes to the stream with the fewest batches so far, so shards are read by one
   process only and the streams end up within one shard's batches of each other.
3. Every stream gets the same number of batches (DDP needs it on every rank, and the DataLoader's
   round robin over workers then gives a fixed order): a short stream splits its largest batches
   in two; one that has none to split (fewer shards than streams) takes the last batch of the longest
   stream, and reads that shard too. No item is repeated or dropped: each is seen once an epoch
   (unless there are fewer items than streams: then some batches are repeated, with a warning).
4. Each stream's batches pass a shuffle buffer seeded from (seed, epoch, stream): a batch is
   drawn at random from the last `shuffle_buffer` to arrive, so consecutive batches come from
   different shards without ever holding more than that many batches in memory.

Position p of rank r is batch p // W of stream r * W + p % W (W workers, 1 for none).
Departure from fairseq: docs/fairseq_differences.md#fd-shard-batches.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from w2vkit.data.sampler import batch_starts, split_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedBatch:
    shard: int
    items: np.ndarray  # (B,) item indices of the index, longest first
    arrived: int  # batches this stream had read when this one was drawn: the buffer's fill + 1


def shard_batches(
    sizes: np.ndarray,
    shard_items: np.ndarray,
    usable: np.ndarray,
    *,
    max_batch_samples: int,
    max_batch_size: int | None,
    required_batch_size_multiple: int,
) -> list[list[np.ndarray]]:
    """Per shard, its batches (item indices, longest first) of the `usable` items (N,) bool."""
    shard_of = np.repeat(np.arange(len(shard_items)), shard_items)  # (N,)
    keep = np.flatnonzero(usable)
    # Longest first within each shard; the stable sort keeps tar order among equal sizes.
    order = keep[np.lexsort((-sizes[keep], shard_of[keep]))]
    counts = np.bincount(shard_of[order], minlength=len(shard_items))
    group_ends = np.cumsum(counts)
    starts = batch_starts(
        sizes[order],
        group_ends[counts > 0],
        max_batch_samples=max_batch_samples,
        max_batch_size=max_batch_size,
        required_batch_size_multiple=required_batch_size_multiple,
    )
    per_shard: list[list[np.ndarray]] = [[] for _ in range(len(shard_items))]
    for a, b in zip(starts, [*starts[1:], len(order)], strict=True):
        per_shard[int(shard_of[order[a]])].append(order[a:b])
    return per_shard


def plan_epoch(
    batches: list[list[np.ndarray]],
    *,
    num_streams: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    shuffle_buffer: int,
    required_batch_size_multiple: int,
    wanted: Sequence[int],
) -> dict[int, list[PlannedBatch]]:
    """The `wanted` streams' batches of `epoch`, in the order they are handed out (see the
    module). Dealing and balancing look at every stream; only the wanted ones are shuffled."""
    shard_order = np.arange(len(batches))
    if shuffle:
        shard_order = _rng(seed, epoch).permutation(len(batches))
    streams = _deal(batches, shard_order, num_streams)
    _balance(streams, required_batch_size_multiple)
    return {
        i: _shuffle_buffer(streams[i], _rng(seed, epoch, i), shuffle_buffer if shuffle else 1)
        for i in wanted
    }


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([len(parts), *parts]))


def _deal(
    batches: list[list[np.ndarray]], shard_order: np.ndarray, num_streams: int
) -> list[tuple[list[int], list[np.ndarray]]]:
    """Whole shards to the stream with the fewest batches (ties: the lowest stream)."""
    streams: list[tuple[list[int], list[np.ndarray]]] = [([], []) for _ in range(num_streams)]
    heap = [(0, s) for s in range(num_streams)]
    for shard in shard_order.tolist():
        if not batches[shard]:
            continue
        count, s = heapq.heappop(heap)
        streams[s][0].extend([shard] * len(batches[shard]))
        streams[s][1].extend(batches[shard])
        heapq.heappush(heap, (count + len(batches[shard]), s))
    return streams


def _balance(streams: list[tuple[list[int], list[np.ndarray]]], multiple: int) -> None:
    """Give every stream as many batches as the longest: split, else move (see the module)."""
    while True:
        counts = [len(s[1]) for s in streams]
        target = max(counts)
        short = [s for s, n in enumerate(counts) if n < target]
        if not short:
            return
        for s in short:
            _split_to(streams[s], target, multiple)
        for s in short:
            if len(streams[s][1]) < target:
                _move_one(streams, s)


def _split_to(stream: tuple[list[int], list[np.ndarray]], target: int, multiple: int) -> None:
    """Split the stream's largest batches (the first among equals) until it has `target` or
    nothing splits; each half stays where its batch was, in order."""
    shards, batches = stream
    # Pieces keyed (batch, path): the path of 0/1 halves sorts them back into batch order.
    pieces: dict[tuple[int, tuple[int, ...]], np.ndarray] = {
        (i, ()): b for i, b in enumerate(batches)
    }
    heap: list[tuple[int, int, tuple[int, ...]]] = [(-len(b), i, ()) for i, b in enumerate(batches)]
    heapq.heapify(heap)
    count = len(batches)
    while count < target and heap:
        _, i, path = heapq.heappop(heap)
        halves = split_rows(pieces[(i, path)], multiple)
        if halves is None:
            break  # the largest has one row: so has every batch
        del pieces[(i, path)]
        for half, piece in enumerate(halves):
            pieces[(i, (*path, half))] = piece
            heapq.heappush(heap, (-len(piece), i, (*path, half)))
        count += 1
    keys = sorted(pieces)
    shards[:] = [shards[i] for i, _ in keys]
    batches[:] = [pieces[k] for k in keys]


def _move_one(streams: list[tuple[list[int], list[np.ndarray]]], to: int) -> None:
    """The last batch of the longest stream to stream `to` (which reads that shard too); with
    no stream of 2 batches to take from, a copy (fewer items than streams)."""
    longest = max(range(len(streams)), key=lambda s: len(streams[s][1]))
    shards, items = streams[longest]
    if len(items) >= 2:
        streams[to][0].append(shards.pop())
        streams[to][1].append(items.pop())
        return
    logger.warning(
        "%d items cannot give each of the %d readers (ranks x data.num_workers) its own batch: "
        "repeating one",
        sum(len(s[1]) for s in streams),
        len(streams),
    )
    streams[to][0].append(shards[-1])
    streams[to][1].append(items[-1])


def _shuffle_buffer(
    stream: tuple[list[int], list[np.ndarray]], rng: np.random.Generator, size: int
) -> list[PlannedBatch]:
    """The stream's batches through a buffer of `size` (1: in order)."""
    out: list[PlannedBatch] = []
    buffer: list[tuple[int, np.ndarray]] = []
    arrived = 0

    def draw() -> None:
        k = int(rng.integers(len(buffer)))
        shard, items = buffer[k]
        buffer[k] = buffer[-1]
        buffer.pop()
        out.append(PlannedBatch(shard, items, arrived))

    for shard, items in zip(*stream, strict=True):
        buffer.append((shard, items))
        arrived += 1
        if len(buffer) >= size:
            draw()
    while buffer:
        draw()
    return out


def stream_of(position: int, rank: int, num_readers: int) -> tuple[int, int]:
    """(stream, index in it) of `rank`'s batch `position`, with `num_readers` workers per rank."""
    return rank * num_readers + position % num_readers, position // num_readers


def first_index(position: int, reader: int, num_readers: int) -> int:
    """The first index in stream `reader` (of a rank) not handed out before `position`."""
    return max(0, (position - reader + num_readers - 1) // num_readers)
