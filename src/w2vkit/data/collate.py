"""`Batch` and `collate`: waveforms of different lengths -> one (B, S) tensor, as fairseq does.

- `pad=False` (pretraining): every row is cropped to the shortest one at a random offset, so a
  batch has no padding at all (fairseq `RawAudioDataset.collater`, `pad: false`).
- `pad=True` (fine-tuning): rows are right-padded with zeros to the longest one and
  `padding_mask` marks the padding (True = padded).
In both modes a row longer than its limit (max_samples) is first cropped to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import torch
from torch.nn.utils.rnn import pad_sequence

_B = TypeVar("_B", bound="Batch")  # `to` and `pin_memory` keep a subclass's type


@dataclass
class Batch:
    """One batch of raw audio.

    `epoch`/`position` name the sampler step that produced it, so the loader can tell the
    sampler how far training has really got (prefetching runs ahead of it).
    """

    wav: torch.Tensor  # (B, S) float32
    padding_mask: torch.Tensor | None  # (B, S) bool, True = padded; None when nothing is padded
    indices: torch.Tensor  # (B,) long, dataset index of each row
    offsets: torch.Tensor | None = None  # (B,) long, sample where each row's crop starts
    num_failed: int = 0  # decode failures while building it (replaced or dropped rows)
    failures: dict[int, str] = field(default_factory=dict)  # failed dataset index -> reason
    epoch: int = -1
    position: int = -1

    @property
    def num_audio_samples(self) -> int:
        """Samples of real audio, padding excluded."""
        if self.padding_mask is None:
            return self.wav.numel()
        return int(self.wav.numel() - self.padding_mask.sum())

    def to(self: _B, device: torch.device | str, non_blocking: bool = False) -> _B:
        return replace(
            self,
            wav=self.wav.to(device, non_blocking=non_blocking),
            padding_mask=None
            if self.padding_mask is None
            else self.padding_mask.to(device, non_blocking=non_blocking),
            indices=self.indices.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self: _B) -> _B:
        """Called by DataLoader(pin_memory=True) on custom batch types."""
        return replace(
            self,
            wav=self.wav.pin_memory(),
            padding_mask=None if self.padding_mask is None else self.padding_mask.pin_memory(),
            indices=self.indices.pin_memory(),
        )


def collate(
    wavs: Sequence[torch.Tensor],
    indices: Sequence[int],
    *,
    pad: bool,
    max_samples: Sequence[int] | None = None,
    random_crop: bool = True,
    generator: torch.Generator | None = None,
    num_failed: int = 0,
    length_multiple: int = 1,
) -> Batch:
    """Stack `wavs` (each (S_i,)) into a Batch. Shape: B x (S_i,) -> wav (B, S).

    Args:
        max_samples: per-row limit; a longer row is cropped to it first.
        random_crop: crop offsets uniform in [0, excess] (fairseq `np.random.randint(0, diff+1)`);
            False keeps the start of each row.
        generator: draws the crop offsets, so a batch is reproducible from its seed.
        length_multiple: `pad=False` crops to the shortest row rounded down to a multiple of this
            (rows shorter than one multiple are kept whole): a few static shapes for compiled code.
    """
    if len(wavs) == 0 or len(wavs) != len(indices):
        raise ValueError(f"need as many wavs as indices (> 0), got {len(wavs)} and {len(indices)}")
    lengths = [len(w) for w in wavs]
    if max_samples is not None:
        lengths = [min(n, int(m)) for n, m in zip(lengths, max_samples, strict=True)]
    target = max(lengths) if pad else min(lengths)
    if not pad and target >= length_multiple:
        target -= target % length_multiple
    rows = []  # views, copied once by stack/pad_sequence: no zero-filled buffer to write into
    starts = []
    for wav, length in zip(wavs, lengths, strict=True):
        keep = min(length, target)
        excess = len(wav) - keep
        start = 0
        if excess > 0 and random_crop:
            start = int(torch.randint(0, excess + 1, (1,), generator=generator))
        rows.append(wav[start : start + keep].to(torch.float32))
        starts.append(start)
    if not pad:
        out = torch.stack(rows)  # (B, S)
        padding_mask = None
    else:
        out = pad_sequence(rows, batch_first=True)  # (B, S), zeros after each row
        kept = torch.tensor([len(r) for r in rows])
        padding_mask = torch.arange(target)[None, :] >= kept[:, None]  # (B, S)
        if not padding_mask.any():
            padding_mask = None  # equal lengths: tell the model there is nothing to mask
    return Batch(
        wav=out,
        padding_mask=padding_mask,
        indices=torch.as_tensor(list(indices), dtype=torch.long),
        offsets=torch.tensor(starts, dtype=torch.long),
        num_failed=num_failed,
    )
