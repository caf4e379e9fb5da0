"""`build_dataloader`: a torch DataLoader whose sampler yields `BatchKey`s and whose items are
whole `Batch`es; `build_loaders`: the train and valid loaders of a `DataConfig`.

A worker turns one key into one batch: it decodes the items, replaces the ones that fail, and
crops with a generator seeded from (seed, epoch, rank, position). Nothing depends on which worker
runs it, so the batches are the same whatever `num_workers` is, and a resumed run rebuilds
exactly the batches it would have seen.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from w2vkit.config import ConfigError
from w2vkit.data.audio import DecodeError
from w2vkit.data.collate import Batch, collate
from w2vkit.data.dataset import AudioDataset, describe
from w2vkit.data.frame_labels import FrameLabels, label_paths
from w2vkit.data.sampler import BatchKey, BucketBatchSampler, seeded_generator

if TYPE_CHECKING:
    from w2vkit.data.config import DataConfig

logger = logging.getLogger(__name__)

MAX_REPLACEMENT_TRIES = 8  # per failed item; then the row is dropped from its batch
REPLACEMENT_WINDOW = 64  # a replacement is drawn from the 64 items just shorter than the failed one


class _BatchMaker(Dataset):
    """Map-style dataset over `BatchKey`s (DataLoader with `batch_size=None`)."""

    def __init__(
        self,
        dataset: AudioDataset,
        *,
        seed: int,
        rank: int,
        max_batch_samples: int,
        labels: FrameLabels | None = None,
    ):
        self.dataset = dataset
        self.labels = labels
        self.length_multiple = 1
        """Unpadded crops are rounded down to a multiple of this (`collate`; train.compile sets it
        before the first batch)."""
        self.seed = seed
        self.rank = rank
        self.max_batch_samples = max_batch_samples
        self._by_size = np.argsort(dataset.sizes, kind="stable")  # (N,) indices, shortest first
        self._sorted_sizes = dataset.sizes[self._by_size]  # (N,)
        self._known_bad: set[int] = set()  # this process's decode failures, not decoded again

    def __getitem__(self, key: BatchKey) -> Batch:
        generator = seeded_generator(self.seed, key.epoch, self.rank, key.position)
        wavs, indices, limits = [], [], []
        failures: dict[int, str] = {}
        num_failed = 0
        for planned in key.indices:
            index, wav, tries = self._load_or_replace(planned, generator, failures)
            num_failed += tries
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
            length_multiple=self.length_multiple,
        )
        batch.failures = failures
        batch.epoch, batch.position = key.epoch, key.position
        return batch if self.labels is None else self.labels.attach(batch)

    def _load_or_replace(
        self, index: int, generator: torch.Generator, failures: dict[int, str]
    ) -> tuple[int, torch.Tensor | None, int]:
        """Decode `index`, or a replacement no longer than it: (index used, wav, failed tries).

        Failed items go into `failures` (index -> reason; the training process logs them once).
        The replacement draws come from the batch's generator and do not depend on what this
        process has seen before, so the result is the same in every worker.
        """
        tries = 0
        for _ in range(MAX_REPLACEMENT_TRIES + 1):
            wav = None if index in self._known_bad else self._decode(index, failures)
            if wav is not None:
                return index, wav, tries
            tries += 1
            self._known_bad.add(index)
            replacement = self._replacement(index, generator)
            if replacement is None:
                break
            index = replacement
        logger.warning("dropping a row from a batch: no decodable replacement for item %d", index)
        return index, None, tries

    def _decode(self, index: int, failures: dict[int, str]) -> torch.Tensor | None:
        try:
            return self.dataset.decode(index)
        except DecodeError as err:
            failures[index] = describe(err)
            return None

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
    dataset: _BatchMaker

    def path_of(self, index: int) -> Path | str:
        """The audio file of dataset item `index` (a URL for a streamed one)."""
        return self.dataset.dataset.path(index)

    # A generator rather than an iterator object: mypy would want a _BaseDataLoaderIter.
    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        failures = self.sampler.failures
        for batch in super().__iter__():
            self.sampler.mark_consumed(batch.epoch, batch.position)
            failures.record(batch.failures, batch.num_failed, self.path_of)
            yield batch


def _as_is(batch: Batch) -> Batch:  # collate_fn: the maker returns whole batches already
    return batch


def ignore_stop_signals(_worker_id: int) -> None:
    """Workers leave SIGTERM/SIGINT to the training process: SLURM `scancel` and systemd signal
    the whole process group, and a worker killed by it would kill the run before it saves."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_dataloader(
    dataset: AudioDataset,
    sampler: BucketBatchSampler,
    *,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    labels: FrameLabels | None = None,
) -> ResumableLoader:
    """A DataLoader yielding `Batch`es in `sampler` order (with `labels`: `LabelledBatch`es).
    See the module docstring."""
    if len(sampler.sizes) != len(dataset):
        raise ValueError(
            f"sampler has {len(sampler.sizes)} sizes but the dataset {len(dataset)} items: "
            "build the sampler from dataset.sizes"
        )
    maker = _BatchMaker(
        dataset,
        seed=seed,
        rank=sampler.rank,
        max_batch_samples=sampler.max_batch_samples,
        labels=labels,
    )
    return ResumableLoader(
        maker,
        sampler=sampler,
        batch_size=None,  # the sampler's keys are whole batches already
        collate_fn=_as_is,  # type: ignore[arg-type]
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers,
        worker_init_fn=ignore_stop_signals,
    )


def build_loaders(
    data_cfg: DataConfig,
    seed: int,
    rank: int,
    world_size: int,
    *,
    pin_memory: bool = False,
    min_decoded_samples: int = 1,
    allow_data_change: bool = False,
) -> dict[str, ResumableLoader]:
    """`{train_split: loader}`, plus `{valid_split: loader}` when that manifest exists and holds
    at least one usable utterance (else the run has no validation; the caller says so).

    The train split is shuffled and randomly cropped; the valid split is neither. Rank `rank` of
    `world_size` gets its share of the batches (the same number on every rank). A file that
    decodes to fewer than `min_decoded_samples` samples (what the model and its masking need) is a
    decode failure. Each sampler carries its dataset's fingerprint, so a resume on changed data is
    refused unless `allow_data_change` (a new epoch on the new data). With `data_cfg.labels`,
    batches carry those frame labels (`w2vkit.data.frame_labels`).
    """
    splits = {data_cfg.train_split: True}
    if data_cfg.valid_split:
        splits[data_cfg.valid_split] = False
    loaders = {}
    for split, is_train in splits.items():
        dataset = _split_dataset(data_cfg, split, is_train, min_decoded_samples)
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
            fingerprint=dataset.fingerprint(),
            allow_data_change=allow_data_change,
        )
        loaders[split] = build_dataloader(
            dataset,
            sampler,
            seed=seed,
            num_workers=data_cfg.num_workers,
            pin_memory=pin_memory,
            persistent_workers=data_cfg.num_workers > 0,
            labels=FrameLabels(
                label_paths(data_cfg.manifest_dir, split, data_cfg.labels),
                dataset.manifest_rows,
                dataset.num_samples,
                label_rate=data_cfg.label_rate,
                sample_rate=data_cfg.sample_rate,
            )
            if data_cfg.labels
            else None,
        )
    return loaders


def _split_dataset(
    data_cfg: DataConfig, split: str, is_train: bool, min_decoded_samples: int
) -> AudioDataset | None:
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
        min_decoded_samples=min_decoded_samples,
    )
    if len(dataset) == 0:
        if not is_train:
            return None
        raise ConfigError(
            f"{path} lists no utterance of at least data.min_samples={data_cfg.min_samples} "
            "samples: nothing to train on"
        )
    return dataset
