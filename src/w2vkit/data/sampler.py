"""Length-bucketed batches under a sample budget, sharded over ranks, resumable mid-epoch.

`batch_by_size` is fairseq's `batch_by_size` for raw audio: items sorted by size, longest first,
ties in random order; a batch grows while `rows * longest <= max_batch_samples`; a batch has
fewer rows than `required_batch_size_multiple` or a multiple of it. `BucketBatchSampler` rebuilds
the batches every epoch from (seed, epoch), shuffles their order, deals them out to ranks, and
yields `BatchKey`s that a DataLoader turns into `Batch`es (see `w2vkit.data.loader`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from w2vkit.config import ConfigError
from w2vkit.data.failures import DecodeFailures

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchKey:
    """Everything needed to build one batch reproducibly: its place in the epoch and its items."""

    epoch: int
    position: int  # index of this batch among this rank's batches of the epoch
    indices: tuple[int, ...]  # dataset indices, longest first


def seeded_generator(*parts: int) -> torch.Generator:
    """A torch.Generator seeded from ints, e.g. (seed, epoch) or (seed, epoch, rank, position).

    numpy's SeedSequence mixes the parts, so (1, 23) and (12, 3) give unrelated streams; the
    count goes first because SeedSequence ignores trailing zeros ((1, 2) would equal (1, 2, 0)).
    """
    entropy = [len(parts), *(int(p) % 2**64 for p in parts)]  # SeedSequence wants them >= 0
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def batch_by_size(
    sizes: np.ndarray,
    *,
    max_batch_samples: int,
    max_batch_size: int | None = None,
    required_batch_size_multiple: int = 1,
    generator: torch.Generator | None = None,
) -> list[np.ndarray]:
    """Greedy fairseq batching. Every item must have `sizes[i] <= max_batch_samples`.

    Returns index arrays, longest item first in each; batches come out longest first too.
    Ties are broken by a random permutation from `generator` (fairseq `ordered_indices`).
    One deliberate difference: fairseq keeps the last batch whole even when it breaks the
    multiple rule (23 rows with multiple 8); here it is split too (16 + 7).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if len(sizes) and sizes.max() > max_batch_samples:
        raise ValueError(
            f"item {int(sizes.argmax())} has {int(sizes.max())} samples > max_batch_samples="
            f"{max_batch_samples}; crop or skip it first"
        )
    if required_batch_size_multiple < 1:
        raise ValueError(
            f"required_batch_size_multiple must be >= 1, got {required_batch_size_multiple}"
        )
    tie_break = torch.randperm(len(sizes), generator=generator).numpy()
    order = np.lexsort((tie_break, sizes))[::-1]  # size descending, random among equal sizes
    starts = batch_starts(
        sizes[order],
        np.array([len(order)]),
        max_batch_samples=max_batch_samples,
        max_batch_size=max_batch_size,
        required_batch_size_multiple=required_batch_size_multiple,
    )
    return [order[a:b] for a, b in pairwise([*starts, len(order)])] if starts else []


def batch_starts(
    sorted_sizes: np.ndarray,
    group_ends: np.ndarray,
    *,
    max_batch_samples: int,
    max_batch_size: int | None,
    required_batch_size_multiple: int,
) -> list[int]:
    """Where each batch starts in `sorted_sizes` (longest first within each group): the greedy
    rule of `batch_by_size`. Groups (`group_ends`, increasing, the last = len) are batched apart:
    no batch spans two (the shards of `w2vkit.data.shards`)."""
    # Sorted longest first, so a batch's longest item is its first: the rows of a batch that
    # starts at position p are fixed by sorted_sizes[p]; only the chain of starts is sequential.
    rows_at = np.maximum(1, max_batch_samples // np.maximum(sorted_sizes, 1))  # (N,)
    if max_batch_size is not None:
        rows_at = np.minimum(rows_at, max_batch_size)
    ends = np.repeat(group_ends, np.diff(np.concatenate([[0], group_ends])))  # (N,) group end
    rows_at = np.minimum(rows_at, ends - np.arange(len(sorted_sizes)))  # the tail of each group
    multiple = required_batch_size_multiple
    # fairseq: fewer rows than the multiple, or a multiple of it; the rest spills over.
    rows_at = np.where(rows_at >= multiple, rows_at - rows_at % multiple, rows_at).tolist()
    starts = []
    start = 0
    while start < len(sorted_sizes):
        starts.append(start)
        start += rows_at[start]
    return starts


class BucketBatchSampler:
    """Yields this rank's `BatchKey`s for the current epoch, resuming where `state_dict` says.

    Args:
        sizes: samples each item contributes to a batch (`AudioDataset.sizes`).
        max_batch_samples: budget per batch, rows x longest row, padding/cropping included
            (fairseq `max_tokens`).
        max_batch_size: at most this many rows (fairseq `max_sentences`).
        skip_oversize: an item longer than `max_batch_samples` is dropped (fairseq
            `skip_invalid_size_inputs_valid_test`); by default it is cropped to it instead.
        fingerprint: names the data (`AudioDataset.fingerprint()`: paths and sizes); saved in
            the state and compared on load. None: a hash of `sizes` alone.
        allow_data_change: on load, a state saved for other data starts a new epoch on this
            data instead of being refused.
        shuffle: random ties and batch order; False = longest batch first, same every epoch.

    Every rank builds the same batches from (seed, epoch) and takes every `world_size`-th one.
    To give every rank the same number of batches and still see every item exactly once, the
    batch list is made divisible by `world_size` by splitting its largest batches in two (a
    split batch respects the row rules and the budget). Only when no batch has two rows left
    to split are batches repeated from the start of the epoch, which then sees a few items twice.
    Dropping a tail instead would silently lose data from every epoch.

    Iterating past the end of an epoch moves to the next one, so a plain `for` loop over epochs
    works without `set_epoch`; calling `set_epoch` with a new epoch restarts at position 0.
    """

    def __init__(
        self,
        sizes: np.ndarray,
        *,
        max_batch_samples: int,
        max_batch_size: int | None = None,
        required_batch_size_multiple: int = 8,
        seed: int = 1,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        skip_oversize: bool = False,
        fingerprint: str | None = None,
        allow_data_change: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if max_batch_samples < 1:
            raise ValueError(f"max_batch_samples must be >= 1, got {max_batch_samples}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        sizes = np.asarray(sizes, dtype=np.int64)
        oversize = np.flatnonzero(sizes > max_batch_samples)
        if len(oversize):
            action = "skipped" if skip_oversize else f"cropped to {max_batch_samples} samples"
            logger.warning(
                "%d items are longer than max_batch_samples=%d and will be %s (first: %s, "
                "%d samples)%s",
                len(oversize),
                max_batch_samples,
                action,
                int(oversize[0]),
                int(sizes[oversize[0]]),
                "" if skip_oversize else "; pass skip_oversize=True to drop them instead",
            )
        self.sizes = sizes
        self.items = np.flatnonzero(sizes <= max_batch_samples) if skip_oversize else None
        self.max_batch_samples = max_batch_samples
        self.max_batch_size = max_batch_size
        self.required_batch_size_multiple = required_batch_size_multiple
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.fingerprint = fingerprint or hashlib.sha256(sizes.tobytes()).hexdigest()[:16]
        self.allow_data_change = allow_data_change
        self.failures = DecodeFailures()  # filled by the loader, saved with the position
        self.epoch = 0
        self.position = 0  # next batch of this rank to hand out
        self._cache: tuple[int, list[np.ndarray]] | None = None
        # The sorted size sequence, hence the row counts, is the same every epoch: so is len().
        self._num_batches = len(self._rank_batches())
        if self._num_batches == 0:
            raise ValueError("no batches: the dataset is empty (or every item was skipped)")

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> Iterator[BatchKey]:
        batches = self._rank_batches()
        epoch = self.epoch
        for position in range(self.position, len(batches)):
            self.mark_consumed(epoch, position)
            yield BatchKey(epoch, position, tuple(batches[position].tolist()))

    def mark_consumed(self, epoch: int, position: int) -> None:
        """Record that batch `position` of `epoch` has been handed to training."""
        self.epoch, self.position = epoch, position + 1
        if self.position >= len(self):
            self.epoch, self.position = epoch + 1, 0

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "world_size": self.world_size,
            "num_batches": len(self),
            "num_items": len(self.sizes),
            "fingerprint": self.fingerprint,
            "decode_failures": self.failures.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at `state["position"]` of `state["epoch"]`; the other keys are checked (a
        mismatch is a `ConfigError`: the run's config or data differ from the checkpoint's)."""
        for key, mine in (("seed", self.seed), ("world_size", self.world_size)):
            if key in state and state[key] != mine:
                raise ConfigError(
                    f"sampler state was saved with {key}={state[key]}, this sampler has {mine}: "
                    "the batches would differ, so resuming mid-epoch would repeat or skip data"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if "decode_failures" in state:
            self.failures.load_state_dict(state["decode_failures"])
        if state.get("fingerprint", self.fingerprint) != self.fingerprint:
            self._data_changed(state)
            return
        if "num_batches" in state and state["num_batches"] != len(self):
            raise ConfigError(
                f"sampler state has {state['num_batches']} batches per epoch, this sampler "
                f"{len(self)}: the dataset or batching options changed since the checkpoint"
            )
        if not 0 <= self.position <= len(self):
            raise ValueError(f"position {self.position} is outside [0, {len(self)}]")
        if self.position == len(self):  # saved just as an epoch ended
            self.epoch, self.position = self.epoch + 1, 0

    def _data_changed(self, state: dict) -> None:
        """Refuse a state saved for other data, or (allow_data_change) start a new epoch."""
        saved = f"{state.get('num_items', '?')} items, fingerprint {state['fingerprint']}"
        if not self.allow_data_change:
            raise ConfigError(
                f"the data changed since the checkpoint (it was saved for {saved}; this data has "
                f"{len(self.sizes)} items, fingerprint {self.fingerprint}): resuming mid-epoch "
                "would repeat some items and skip others. Restore the old manifest, or pass "
                "train.allow_data_change=true to start a new epoch on the new data"
            )
        logger.warning(
            "the data changed since the checkpoint (saved for %s, now %d items): starting "
            "epoch %d on the new data",
            saved,
            len(self.sizes),
            self.epoch + 1 if self.position else self.epoch,
        )
        self.failures = DecodeFailures()  # indices of the old data mean nothing here
        self.epoch, self.position = self.epoch + (1 if self.position else 0), 0

    def _rank_batches(self) -> list[np.ndarray]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._build(self.epoch)[self.rank :: self.world_size])
        return self._cache[1]

    def _build(self, epoch: int) -> list[np.ndarray]:
        """All ranks' batches of `epoch`, in the order they are dealt out."""
        # shuffle=False: ties still need an order; take epoch 0's, so every epoch is the same.
        generator = seeded_generator(self.seed, epoch if self.shuffle else 0)
        items = np.arange(len(self.sizes)) if self.items is None else self.items
        clipped = np.minimum(self.sizes[items], self.max_batch_samples)
        batches = batch_by_size(
            clipped,
            max_batch_samples=self.max_batch_samples,
            max_batch_size=self.max_batch_size,
            required_batch_size_multiple=self.required_batch_size_multiple,
            generator=generator,
        )
        batches = _split_to_multiple(batches, self.world_size, self.required_batch_size_multiple)
        if self.items is not None:
            batches = [items[b] for b in batches]
        if self.shuffle:
            order = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in order]
        if len(batches) % self.world_size:
            missing = self.world_size - len(batches) % self.world_size
            logger.warning(
                "%d batches cannot be split over %d ranks: repeating %d of them this epoch",
                len(batches),
                self.world_size,
                missing,
            )
            batches += (batches * self.world_size)[:missing]
        return batches


def _split_to_multiple(
    batches: list[np.ndarray], world_size: int, multiple: int
) -> list[np.ndarray]:
    """Split the largest batches in two until len(batches) % world_size == 0, if possible.

    Each half keeps the row rule: a batch of k*multiple rows splits at a multiple; a batch
    below the multiple gives two halves below it. Both halves stay under the budget.
    """
    batches = list(batches)
    while len(batches) % world_size and split_largest(batches, multiple) is not None:
        pass
    return batches


def split_largest(batches: list[np.ndarray], multiple: int) -> int | None:
    """Split the first of the largest batches in two, in place (the halves at i and i + 1): i,
    or None when no batch has 2 rows."""
    if not batches:
        return None
    rows = np.fromiter((len(b) for b in batches), dtype=np.int64, count=len(batches))
    largest = int(rows.argmax())  # the first of the largest
    halves = split_rows(batches[largest], multiple)
    if halves is None:
        return None
    batches[largest : largest + 1] = halves
    return largest


def split_rows(batch: np.ndarray, multiple: int) -> list[np.ndarray] | None:
    """Two halves that both keep the row rule (below the multiple, or a multiple of it); None
    for a batch of one row."""
    num_rows = len(batch)
    if num_rows < 2:
        return None
    whole = num_rows // multiple
    cut = (whole // 2) * multiple if num_rows % multiple == 0 and whole >= 2 else num_rows // 2
    return [batch[:cut], batch[cut:]]
