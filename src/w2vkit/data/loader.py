"""`build_dataloader`: a torch DataLoader whose sampler yields `BatchKey`s and whose items are
whole `Batch`es; `build_loaders`: the train and valid loaders of a `DataConfig`.

A worker turns one key into one batch: it decodes the items, replaces the ones that fail, and
crops with a generator seeded from (seed, epoch, rank, position). Nothing depends on which worker
runs it, so the batches are the same whatever `num_workers` is, and a resumed run rebuilds
exactly the batches it would have seen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from w2vkit.config import ConfigError
from w2vkit.data.collate import Batch, collate
from w2vkit.data.dataset import AudioDataset
from w2vkit.data.sampler import BatchKey, BucketBatchSampler, seeded_generator

if TYPE_CHECKING:
    from w2vkit.train.config import DataConfig

logger = logging.getLogger(__name__)

MAX_REPLACEMENT_TRIES = 8  # per failed item; then the row is dropped from its batch
REPLACEMENT_WINDOW = 64  # a replacement is drawn from the 64 items just shorter than the failed one


class _BatchMaker(Dataset):
    """Map-style dataset over `BatchKey`s (DataLoader with `batch_size=None`)."""

    def __init__(self, dataset: AudioDataset, *, seed: int, rank: int, max_batch_samples: int):
        self.dataset = dataset
        self.seed = seed
        self.rank = rank
        self.max_batch_samples = max_batch_samples
        self._by_size = np.argsort(dataset.sizes, kind="stable")  # (N,) indices, shortest first
        self._sorted_sizes = dataset.sizes[self._by_size]  # (N,)
        self._known_bad: set[int] = set()  # this process's decode failures, not decoded again

    def __getitem__(self, key: BatchKey) -> Batch:
        generator = seeded_generator(self.seed, key.epoch, self.rank, key.position)
        wavs, indices, limits = [], [], []
        num_failed = 0
        for planned in key.indices:
            index, wav, failures = self._load_or_replace(planned, generator)
            num_failed += failures
            if wav is not None:
                wavs.append(wav)
                indices.append(index)
                # The planned size, which sampler and budget assume; also caps a file whose rate
                # was not in the manifest and so decoded longer than planned.
                limits.append(min(int(self.dataset.sizes[index]), self.max_batch_samples))
        if not wavs:
            paths = ", ".join(str(self.dataset.path(i)) for i in key.indices[:4])
            raise RuntimeError(
                f"every item of batch {key.position} (epoch {key.epoch}) and all their "
                f"replacements failed to decode; first files: {paths}"
            )
        batch = collate(
            wavs,
            indices,
            pad=self.dataset.pad,
            max_samples=limits,
            random_crop=self.dataset.random_crop,
            generator=generator,
            num_failed=num_failed,
        )
        batch.epoch, batch.position = key.epoch, key.position
        return batch

    def _load_or_replace(
        self, index: int, generator: torch.Generator
    ) -> tuple[int, torch.Tensor | None, int]:
        """Decode `index`, or a replacement no longer than it: (index used, wav, failures).

        The replacement draws come from the batch's generator and do not depend on what this
        process has seen before, so the result is the same in every worker.
        """
        failures = 0
        for _ in range(MAX_REPLACEMENT_TRIES + 1):
            wav = None if index in self._known_bad else self.dataset.load(index)
            if wav is not None:
                return index, wav, failures
            failures += 1
            self._known_bad.add(index)
            replacement = self._replacement(index, generator)
            if replacement is None:
                break
            index = replacement
        logger.warning("dropping a row from a batch: no decodable replacement for item %d", index)
        return index, None, failures

    def _replacement(self, index: int, generator: torch.Generator) -> int | None:
        """A random item among the REPLACEMENT_WINDOW next shorter ones: no longer than `index`,
        so the batch stays within its budget, and close in length, so cropping wastes little."""
        end = int(np.searchsorted(self._sorted_sizes, self.dataset.sizes[index], side="right"))
        window = self._by_size[max(0, end - REPLACEMENT_WINDOW - 1) : end]
        window = window[window != index]
        if len(window) == 0:
            return None
        return int(window[int(torch.randint(len(window), (1,), generator=generator))])


class ResumableLoader(DataLoader[Batch]):
    """A DataLoader that tells the sampler which batch training has actually received.

    Prefetching makes the sampler run ahead of training; marking each batch as it is handed
    out keeps `sampler.state_dict()` exact, so resuming neither repeats nor skips a batch.
    """

    sampler: BucketBatchSampler

    # A generator rather than an iterator object: mypy would want a _BaseDataLoaderIter.
    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        for batch in super().__iter__():
            self.sampler.mark_consumed(batch.epoch, batch.position)
            yield batch


def _as_is(batch: Batch) -> Batch:  # collate_fn: the maker returns whole batches already
    return batch


def build_dataloader(
    dataset: AudioDataset,
    sampler: BucketBatchSampler,
    *,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> ResumableLoader:
    """A DataLoader yielding `Batch`es in `sampler` order. See the module docstring."""
    if len(sampler.sizes) != len(dataset):
        raise ValueError(
            f"sampler has {len(sampler.sizes)} sizes but the dataset {len(dataset)} items: "
            "build the sampler from dataset.sizes"
        )
    maker = _BatchMaker(
        dataset, seed=seed, rank=sampler.rank, max_batch_samples=sampler.max_batch_samples
    )
    return ResumableLoader(
        maker,
        sampler=sampler,
        batch_size=None,  # the sampler's keys are whole batches already
        collate_fn=_as_is,  # type: ignore[arg-type]
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers,
    )


def build_loaders(
    data_cfg: DataConfig, seed: int, rank: int, world_size: int, *, pin_memory: bool = False
) -> dict[str, ResumableLoader]:
    """`{train_split: loader}`, plus `{valid_split: loader}` when that manifest exists and holds
    at least one usable utterance (else the run has no validation; the caller says so).

    The train split is shuffled and randomly cropped; the valid split is neither. Rank `rank` of
    `world_size` gets its share of the batches (the same number on every rank).
    """
    splits = {data_cfg.train_split: True}
    if data_cfg.valid_split:
        splits[data_cfg.valid_split] = False
    loaders = {}
    for split, is_train in splits.items():
        dataset = _split_dataset(data_cfg, split, is_train=is_train)
        if dataset is None:
            continue
        sampler = BucketBatchSampler(
            dataset.sizes,
            max_batch_samples=data_cfg.max_batch_samples,
            max_batch_size=data_cfg.max_batch_size,
            required_batch_size_multiple=data_cfg.required_batch_size_multiple,
            seed=seed,
            rank=rank,
            world_size=world_size,
            shuffle=is_train,
        )
        loaders[split] = build_dataloader(
            dataset,
            sampler,
            seed=seed,
            num_workers=data_cfg.num_workers,
            pin_memory=pin_memory,
            persistent_workers=data_cfg.num_workers > 0,
        )
    return loaders


def _split_dataset(data_cfg: DataConfig, split: str, *, is_train: bool) -> AudioDataset | None:
    """The split's dataset; None for a valid split without a usable item (the train split must
    have one: ConfigError)."""
    path = Path(data_cfg.manifest_dir) / f"{split}.tsv"
    if not (path.is_file() and path.stat().st_size > 0):
        if not is_train:
            return None
        raise ConfigError(
            f"data.manifest_dir: {path} is missing or empty; write it with "
            f"`w2vkit manifest AUDIO_DIR --dest {data_cfg.manifest_dir}`"
        )
    dataset = AudioDataset(
        path,
        sample_rate=data_cfg.sample_rate,
        min_samples=data_cfg.min_samples,
        max_samples=data_cfg.max_samples,
        pad=data_cfg.pad,
        normalize=data_cfg.normalize,
        random_crop=is_train,
    )
    if len(dataset) == 0:
        if not is_train:
            return None
        raise ConfigError(
            f"{path} lists no utterance of at least data.min_samples={data_cfg.min_samples} "
            "samples: nothing to train on"
        )
    return dataset
