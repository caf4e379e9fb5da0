"""Labelled audio for CTC: a manifest, its `.ltr` targets, batches with padded targets.

fairseq's layout: `train.tsv` (the manifest), `train.ltr` (one line of letters per manifest row,
same order), `train.wrd` (the words; not read for training) and `dict.ltr.txt` in the same folder.

As fairseq's `audio_finetuning` task, fine-tuning sees whole utterances: no random crop; a batch
pads to its longest utterance and carries a padding mask. Utterances longer than the batch budget
are skipped (fairseq `skip_invalid_size_inputs_valid_test`), never cropped: cropping would cut the
audio away from its transcript.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from w2vkit.config import ConfigError
from w2vkit.data.collate import Batch
from w2vkit.data.dataset import AudioDataset
from w2vkit.data.loader import build_dataloader
from w2vkit.data.manifest import read_manifest
from w2vkit.data.sampler import BucketBatchSampler
from w2vkit.data.shards.stream import ShardBatch
from w2vkit.data.text import read_utf8
from w2vkit.data.vocab import PAD, WORD_SEPARATOR, Vocabulary
from w2vkit.model.feature_extractor import output_lengths

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class LabelledBatch(Batch):
    """A `Batch` of audio plus its CTC targets (satisfies the training loop's `LoopBatch`)."""

    targets: torch.Tensor  # (B, L) long, padded with PAD
    target_lengths: torch.Tensor  # (B,) long

    def to(self, device: torch.device | str, non_blocking: bool = False) -> LabelledBatch:
        return replace(
            super().to(device, non_blocking=non_blocking),
            targets=self.targets.to(device, non_blocking=non_blocking),
            target_lengths=self.target_lengths.to(device, non_blocking=non_blocking),
        )


def read_labels(path: str | os.PathLike, *, manifest_path: str | os.PathLike) -> list[str]:
    """Lines of a `.ltr`/`.wrd` file; their number must equal the manifest's rows."""
    path, manifest_path = Path(path), Path(manifest_path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: no label file beside {manifest_path} (write it with w2vkit labels)"
        )
    lines = read_utf8(path).splitlines()
    num_rows = len(read_manifest(manifest_path))
    if len(lines) != num_rows:
        raise ConfigError(
            f"{path} has {len(lines)} lines but {manifest_path} has {num_rows} audio rows: "
            "one transcript line per audio file, in the same order"
        )
    return lines


class LabelledDataset:
    """An `AudioDataset` (whole utterances, padded) and the encoded `.ltr` line of every item."""

    def __init__(
        self,
        manifest_path: str | os.PathLike,
        vocab: Vocabulary,
        *,
        labels: str = "ltr",
        sample_rate: int = 16000,
        min_samples: int = 0,
        normalize: bool = False,
        conv_layers: Sequence[tuple[int, int, int]] | None = None,
    ) -> None:
        """`conv_layers`: the model's frame grid, to count the transcripts CTC cannot align."""
        manifest_path = Path(manifest_path)
        label_path = manifest_path.with_suffix(f".{labels}")
        lines = read_labels(label_path, manifest_path=manifest_path)
        self.audio = AudioDataset(
            manifest_path,
            sample_rate=sample_rate,
            min_samples=min_samples,
            pad=True,
            normalize=normalize,
            random_crop=False,
        )
        # Item i of the audio dataset is manifest row manifest_rows[i] (short rows are dropped).
        self.targets = [
            torch.tensor(vocab.encode(lines[row]), dtype=torch.long)
            for row in self.audio.manifest_rows
        ]
        self.vocab = vocab
        kept_lines = [lines[row] for row in self.audio.manifest_rows]
        _check_symbols(label_path, kept_lines, vocab)
        digest = hashlib.sha256(self.audio.fingerprint().encode())
        digest.update("\n".join(kept_lines).encode("utf-8", "surrogateescape"))
        self._fingerprint = digest.hexdigest()[:16]
        self.num_infeasible = 0
        if conv_layers is not None:
            self.num_infeasible = _count_infeasible(label_path, self, conv_layers)

    def __len__(self) -> int:
        return len(self.audio)

    def fingerprint(self) -> str:
        """Names the items and their transcripts (16 hex digits): a resume on changed labels
        is refused as one on changed audio, since the batches would mean other targets."""
        return self._fingerprint

    def attach(self, batch: Batch) -> LabelledBatch:
        """Add the targets of `batch.indices` to an audio batch."""
        rows = [self.targets[int(i)] for i in batch.indices]
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        if max(lengths.tolist(), default=0) == 0:
            targets = torch.full((len(rows), 0), PAD, dtype=torch.long)
        else:
            targets = pad_sequence(rows, batch_first=True, padding_value=PAD)  # (B, L)
        return LabelledBatch(
            wav=batch.wav,
            padding_mask=batch.padding_mask,
            indices=batch.indices,
            targets=targets,
            target_lengths=lengths,
            num_failed=batch.num_failed,
            epoch=batch.epoch,
            position=batch.position,
        )


def _check_symbols(label_path: Path, lines: list[str], vocab: Vocabulary) -> None:
    """Symbols of the labels that the dictionary lacks would train as `<unk>`: say so."""
    unknown = Counter(s for line in lines for s in line.split() if s not in vocab.index)
    if not unknown:
        return
    if WORD_SEPARATOR in unknown:
        raise ConfigError(
            f"{label_path} has word boundaries {WORD_SEPARATOR!r} but the dictionary has none: "
            "every word boundary would train as <unk>; rewrite dict.ltr.txt with w2vkit labels"
        )
    listed = ", ".join(f"{s!r} ({n}x)" for s, n in unknown.most_common(5))
    logger.warning(
        "%s: %d symbols are not in the dictionary and train as <unk>: %s",
        label_path, sum(unknown.values()), listed,
    )  # fmt: skip


def _count_infeasible(
    label_path: Path, dataset: LabelledDataset, conv_layers: Sequence[tuple[int, int, int]]
) -> int:
    """Transcripts longer than CTC can align in their audio (a frame per letter, and a blank
    between repeated letters). Their loss is infinite, zeroed by `ctc.zero_infinity`: they teach
    nothing, silently; counted and named here."""
    frames = output_lengths(torch.as_tensor(dataset.audio.num_samples), conv_layers).tolist()
    infeasible = []
    for item, (target, num_frames) in enumerate(zip(dataset.targets, frames, strict=True)):
        repeats = int((target[1:] == target[:-1]).sum()) if len(target) > 1 else 0
        if len(target) + repeats > num_frames:
            infeasible.append(int(dataset.audio.manifest_rows[item]) + 1)
    if infeasible:
        logger.warning(
            "%s: %d of %d transcripts need more frames than their audio has (CTC emits at most "
            "one letter per frame), so they add no loss: lines %s",
            label_path, len(infeasible), len(frames), ", ".join(map(str, infeasible[:5])),
        )  # fmt: skip
    return len(infeasible)


class StreamedTargets:
    """The `attach` of streamed batches (`data.shards`): each row's label came in its member's
    JSON (`ShardBatch.labels`), encoded here with `vocab`."""

    def __init__(self, vocab: Vocabulary, num_items: int) -> None:
        self.vocab = vocab
        self.num_items = num_items

    def __len__(self) -> int:
        return self.num_items

    def attach(self, batch: ShardBatch) -> LabelledBatch:
        rows = [
            torch.tensor(self.vocab.encode(text), dtype=torch.long) for text in batch.labels or []
        ]
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        targets = pad_sequence(rows, batch_first=True, padding_value=PAD)  # (B, L)
        return LabelledBatch(
            wav=batch.wav,
            padding_mask=batch.padding_mask,
            indices=batch.indices,
            targets=targets,
            target_lengths=lengths,
            num_failed=batch.num_failed,
            epoch=batch.epoch,
            position=batch.position,
        )


class LabelledLoader:
    """Iterates the audio DataLoader and attaches each batch's targets (in this process: cheap)."""

    def __init__(self, dataset: LabelledDataset | StreamedTargets, loader) -> None:
        self.dataset = dataset
        self.loader = loader
        self.sampler = loader.sampler

    def __iter__(self) -> Iterator[LabelledBatch]:
        for batch in self.loader:
            yield self.dataset.attach(batch)

    def __len__(self) -> int:
        return len(self.loader)


def build_labelled_loader(
    dataset: LabelledDataset,
    *,
    max_batch_samples: int,
    max_batch_size: int | None,
    required_batch_size_multiple: int,
    seed: int,
    rank: int,
    world_size: int,
    shuffle: bool,
    num_workers: int = 0,
    pin_memory: bool = False,
    allow_data_change: bool = False,
) -> LabelledLoader:
    """Length-bucketed batches of whole utterances; longer than `max_batch_samples`: skipped.

    The sampler carries the data's fingerprint (audio and labels), so a resume on changed data is
    refused unless `allow_data_change` (a new epoch on the new data), as in pretraining."""
    sampler = BucketBatchSampler(
        dataset.audio.sizes,
        max_batch_samples=max_batch_samples,
        max_batch_size=max_batch_size,
        required_batch_size_multiple=required_batch_size_multiple,
        seed=seed,
        rank=rank,
        world_size=world_size,
        shuffle=shuffle,
        skip_oversize=True,
        fingerprint=dataset.fingerprint(),
        allow_data_change=allow_data_change,
    )
    loader = build_dataloader(
        dataset.audio,
        sampler,
        seed=seed,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
    return LabelledLoader(dataset, loader)


__all__ = [
    "LabelledBatch",
    "LabelledDataset",
    "LabelledLoader",
    "StreamedTargets",
    "build_labelled_loader",
    "read_labels",
]
