"""`ShardLoader`: batches streamed from tar shards, with the same protocol as `ResumableLoader`
(the loop reads `loader.sampler`'s state and failures, batches carry epoch and position), so
training runs on shards without knowing it.

Resume is exact because a batch is a function of (index, seed, epoch, rank, position) alone
(`plan`, `stream`): the sampler state needs only the epoch and the next position. It also
records, for the record and to refuse a resume that could not be exact, each reader's shard and
place in its stream and the shuffle buffer's seed and fill. A resume with another
`data.num_workers` (or world size) is refused: each reader has its own stream of shards.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Literal, Protocol

import numpy as np
from torch.utils.data import DataLoader

from w2vkit.config import ConfigError, UsageError
from w2vkit.data.audio import resampled_length
from w2vkit.data.failures import DecodeFailures
from w2vkit.data.loader import ResumableLoader, ignore_stop_signals
from w2vkit.data.manifest import UNKNOWN_RATE
from w2vkit.data.sampler import BucketBatchSampler
from w2vkit.data.shards.fetch import ShardUnavailable
from w2vkit.data.shards.index import ShardIndex, item_key, read_index
from w2vkit.data.shards.plan import first_index, shard_batches
from w2vkit.data.shards.stream import ShardBatch, ShardFault, ShardStream, StreamSpec

logger = logging.getLogger(__name__)


class ShardData(Protocol):
    """The `data` fields streaming reads (pretraining's `DataConfig`, fine-tuning's too)."""

    shards: str
    train_split: str
    valid_split: str
    sample_rate: int
    min_samples: int
    normalize: bool
    max_batch_samples: int
    max_batch_size: int | None
    required_batch_size_multiple: int
    num_workers: int
    shard_prefetch: int
    shard_cache: str
    shuffle_buffer: int
    shard_retries: int
    shard_retry_wait: float
    shard_timeout: float
    shard_errors: Literal["stop", "skip"]


class ShardSampler(BucketBatchSampler):
    """The epoch and position of a shard stream (a `BucketBatchSampler` for the loop: the same
    `set_epoch`, `mark_consumed`, `failures` and state checks; the batches come from `plan`)."""

    def __init__(self, spec: StreamSpec, *, world_size: int, allow_data_change: bool) -> None:
        # No super().__init__: it would batch the whole corpus up front.
        self.spec = spec
        self.sizes = spec.sizes
        self.seed, self.rank, self.world_size = spec.seed, spec.rank, world_size
        self.shuffle = spec.shuffle
        self.fingerprint = spec.index.fingerprint()
        self.allow_data_change = allow_data_change
        self.failures = DecodeFailures()
        self.epoch = self.position = 0
        self._counts: dict[int, int] = {}
        len(self)  # plans epoch 0 now: a problem shows before training starts

    def __len__(self) -> int:
        """This rank's batches in the current epoch (dealing shards makes it vary a little)."""
        if self.epoch not in self._counts:
            self._counts = {self.epoch: len(self.spec.plan(self.epoch, [0])[0])}
        return self._counts[self.epoch] * self.spec.num_readers

    def __iter__(self) -> Iterator:  # the DataLoader's index sampler for an iterable dataset
        while True:
            yield None

    def state_dict(self) -> dict:
        state = super().state_dict()
        readers = list(range(self.spec.num_readers))
        plans = self.spec.plan(self.epoch, readers)
        streams = []
        for reader in readers:
            j = first_index(self.position, reader, self.spec.num_readers)
            planned = plans[reader][min(j, len(plans[reader]) - 1)]
            streams.append(
                {
                    "batch": j,  # next batch of this reader's stream
                    "shard": self.spec.index.urls[planned.shard],
                    "shuffle_fill": planned.arrived - j - 1,  # batches waiting in the buffer
                }
            )
        return state | {
            "num_readers": self.spec.num_readers,
            "shuffle_buffer": self.spec.shuffle_buffer,
            "readers": streams,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("num_readers", "shuffle_buffer"):
            mine = getattr(self.spec, key)
            if key in state and state[key] != mine:
                raise ConfigError(
                    f"sampler state was saved with {key}={state[key]}, this run has {mine} "
                    "(data.num_workers / data.shuffle_buffer): every reader streams its own "
                    "shards, so resuming mid-epoch would repeat or skip data; keep the setting"
                )
        super().load_state_dict(state)


class ShardLoader(ResumableLoader):
    """A DataLoader over a `ShardStream`; see the module docstring."""

    dataset: ShardStream  # type: ignore[assignment]

    def __init__(self, stream: ShardStream, sampler: ShardSampler, **kwargs) -> None:
        super().__init__(stream, batch_size=None, collate_fn=_as_is, **kwargs)  # type: ignore[arg-type]
        # An iterable dataset takes no sampler; this one only keeps the position (it yields
        # None forever, as DataLoader's own sampler for iterable datasets does).
        object.__setattr__(self, "sampler", sampler)

    def path_of(self, index: int) -> str:
        """Where item `index` lives: its shard's location and member key, `SHARD#KEY`."""
        shards = self.dataset.spec.index
        shard = int(np.searchsorted(shards.first_item, index, side="right") - 1)
        return f"{shards.urls[shard]}#{item_key(index - int(shards.key_offset[shard]))}"

    def __iter__(self) -> Iterator[ShardBatch]:  # type: ignore[override]
        sampler = self.sampler
        self.dataset.start = (sampler.epoch, sampler.position)
        for batch in DataLoader.__iter__(self):
            if isinstance(batch, ShardFault):
                raise batch.error
            if (batch.epoch, batch.position) != (sampler.epoch, sampler.position):
                raise RuntimeError(
                    f"shard readers out of order: got batch {batch.position} of epoch "
                    f"{batch.epoch}, expected {sampler.position} of epoch {sampler.epoch}"
                )
            sampler.mark_consumed(batch.epoch, batch.position)
            sampler.failures.record(batch.failures, batch.num_failed, self.path_of)
            yield batch


def _as_is(batch: ShardBatch) -> ShardBatch:
    return batch


def build_shard_loaders(
    data_cfg: ShardData,
    seed: int,
    rank: int,
    world_size: int,
    *,
    pin_memory: bool = False,
    min_decoded_samples: int = 1,
    allow_data_change: bool = False,
    pad: bool | None = None,
    max_samples: int | None = -1,
    label: str = "",
) -> dict[str, ShardLoader]:
    """`{train_split: loader}` (+ valid when its index exists) from `data_cfg.shards`.

    Pretraining takes `pad`/`max_samples` from `data_cfg` (None / -1: its `pad`, `max_samples`);
    fine-tuning passes pad=True, max_samples=None (whole utterances; longer than the batch
    budget: skipped) and `label`.
    """
    if pad is None:
        pad = bool(getattr(data_cfg, "pad"))  # noqa: B009 (not a ShardData field)
    if max_samples == -1:
        max_samples = getattr(data_cfg, "max_samples")  # noqa: B009
    loaders = {}
    for split, is_train in ((data_cfg.train_split, True), (data_cfg.valid_split, False)):
        if not split:
            continue
        # A missing valid split only switches validation off: ask once, without retries.
        fetch = _fetch_options(data_cfg) | ({} if is_train else {"retries": 0})
        try:
            index = read_index(data_cfg.shards, split, **fetch)
        except (ShardUnavailable, UsageError) as err:
            if is_train:
                raise
            logger.warning("training without validation: %s", err)
            continue
        spec = _spec(
            data_cfg, index, seed, rank, world_size, is_train, min_decoded_samples, pad,
            max_samples, label,
        )  # fmt: skip
        if spec is None:
            continue
        stream = ShardStream(spec)
        loaders[split] = ShardLoader(
            stream,
            ShardSampler(spec, world_size=world_size, allow_data_change=allow_data_change),
            num_workers=data_cfg.num_workers,
            pin_memory=pin_memory,
            worker_init_fn=ignore_stop_signals,
        )
    return loaders


def _fetch_options(data_cfg: ShardData) -> dict:
    return {
        "retries": data_cfg.shard_retries,
        "retry_wait": data_cfg.shard_retry_wait,
        "timeout": data_cfg.shard_timeout,
        "cache_dir": data_cfg.shard_cache,
    }


def _spec(
    data_cfg: ShardData,
    index: ShardIndex,
    seed: int,
    rank: int,
    world_size: int,
    is_train: bool,
    min_decoded_samples: int,
    pad: bool,
    max_samples: int | None,
    label: str,
) -> StreamSpec | None:
    rates = index.sample_rates
    known = rates != UNKNOWN_RATE
    num_samples = np.where(
        known,
        resampled_length(index.num_frames, np.where(known, rates, 1), data_cfg.sample_rate),
        index.num_frames,
    )
    sizes = num_samples if max_samples is None else np.minimum(num_samples, max_samples)
    usable = (num_samples >= max(data_cfg.min_samples, 1)) & (sizes <= data_cfg.max_batch_samples)
    if label and label not in index.labels:
        raise ConfigError(
            f"data.shards={data_cfg.shards}: the shards carry no {label!r} labels (they have "
            f"{index.labels or 'none'}); write the labels beside the manifest, then shard again"
        )
    if not usable.any():
        if is_train:
            raise ConfigError(f"data.shards={data_cfg.shards}: no usable utterance to train on")
        return None
    num_readers = max(1, data_cfg.num_workers)
    return StreamSpec(
        index=index,
        batches=shard_batches(
            sizes,
            index.shard_items,
            usable,
            max_batch_samples=data_cfg.max_batch_samples,
            max_batch_size=data_cfg.max_batch_size,
            required_batch_size_multiple=data_cfg.required_batch_size_multiple,
        ),
        num_samples=num_samples,
        sizes=sizes,
        sample_rate=data_cfg.sample_rate,
        pad=pad,
        normalize=data_cfg.normalize,
        random_crop=is_train,
        min_decoded_samples=min_decoded_samples,
        label=label,
        seed=seed,
        rank=rank,
        num_streams=world_size * num_readers,
        num_readers=num_readers,
        shuffle=is_train,
        shuffle_buffer=data_cfg.shuffle_buffer,
        required_batch_size_multiple=data_cfg.required_batch_size_multiple,
        fetch=_fetch_options(data_cfg),
        prefetch=data_cfg.shard_prefetch,
        skip_unreachable=data_cfg.shard_errors == "skip",
    )
