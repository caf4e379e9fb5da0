"""`AudioDataset`: the unlabeled audio of one manifest, decoded to mono 16 kHz on demand.

fairseq's `FileAudioDataset`, with three differences: files at other rates are resampled (fairseq
raises), sizes are known at the target rate before anything is decoded (from the manifest's
sidecar), and a file that fails to decode returns None instead of killing the run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from w2vkit.data.audio import SAMPLE_RATE, load_audio, normalize, resampled_length
from w2vkit.data.manifest import UNKNOWN_RATE, Manifest, read_manifest

logger = logging.getLogger(__name__)


class AudioDataset:
    """Items of a manifest at least `min_samples` long (at `sample_rate`).

    Args:
        manifest: a `Manifest` or the path of a `.tsv` manifest.
        min_samples: shorter items are dropped at load (fairseq `min_sample_size`), and counted.
        max_samples: longer items are cropped to this many samples when batched
            (fairseq `max_sample_size`); None = no limit.
        pad: batches pad to the longest item and carry a padding mask (fine-tuning); otherwise
            every item is cropped to the shortest one (pretraining, fairseq's default).
        normalize: zero mean, unit variance per utterance (needed by the LARGE LV-60 models).
        random_crop: crop at a random offset (training); False crops from the start.

    `sizes[i]` is the number of samples item i contributes to a batch, min(length, max_samples),
    which is what `BucketBatchSampler` batches by (fairseq's `size(i)`); `num_samples[i]` is the
    full length at `sample_rate`.
    """

    def __init__(
        self,
        manifest: Manifest | str | os.PathLike,
        *,
        sample_rate: int = SAMPLE_RATE,
        min_samples: int = 0,
        max_samples: int | None = None,
        pad: bool = False,
        normalize: bool = False,
        random_crop: bool = True,
    ) -> None:
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
        if max_samples is not None and min_samples > max_samples:
            raise ValueError(f"min_samples {min_samples} > max_samples {max_samples}")
        if not isinstance(manifest, Manifest):
            manifest = read_manifest(manifest)
        self.root = manifest.root
        self.sample_rate = sample_rate
        self.max_samples = max_samples
        self.pad = pad
        self.normalize = normalize
        self.random_crop = random_crop
        self.num_failed = 0  # decode failures seen by this process

        num_samples = _target_lengths(manifest, sample_rate)
        keep = num_samples >= max(min_samples, 1)  # a zero-length row can never make a batch
        num_short = int(len(manifest) - keep.sum())
        if num_short:
            logger.info(
                "%s: dropped %d of %d items shorter than min_samples=%d (%.2f s)",
                manifest.root,
                num_short,
                len(manifest),
                min_samples,
                min_samples / sample_rate,
            )
        self.manifest_rows = np.flatnonzero(keep)  # (N,) row of each item in the manifest
        self.num_samples = num_samples[keep]  # (N,) full length at sample_rate
        limit = np.iinfo(np.int64).max if max_samples is None else max_samples
        self.sizes = np.minimum(self.num_samples, limit)  # (N,) samples in a batch, at most
        # Paths as one byte buffer + offsets, not a list of str: DataLoader workers would
        # otherwise touch a million refcounts and copy the pages (pytorch issue 13246).
        encoded = [os.fsencode(manifest.paths[i]) for i in self.manifest_rows]
        self._path_bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._path_ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.sizes)

    def path(self, index: int) -> Path:
        start = int(self._path_ends[index - 1]) if index > 0 else 0
        relative = os.fsdecode(self._path_bytes[start : self._path_ends[index]].tobytes())
        return self.root / relative

    def load(self, index: int) -> torch.Tensor | None:
        """Decode item `index` (mono, `sample_rate`, normalised if asked). Shape: (S,).

        Returns None, counts it in `num_failed` and logs the path when the file cannot be
        decoded, so that one bad file never stops training.
        """
        path = self.path(index)
        try:
            wav = load_audio(path, self.sample_rate)
        except Exception as err:  # noqa: BLE001 (libsndfile, soxr, OS errors: all mean a bad file)
            self.num_failed += 1
            logger.warning("skipping %s (item %d): cannot decode: %s", path, index, err)
            return None
        return torch.from_numpy(normalize(wav) if self.normalize else wav)


def _target_lengths(manifest: Manifest, sample_rate: int) -> np.ndarray:
    """Samples per row at `sample_rate`: exact for rows with a known rate, else the frames."""
    rates = manifest.sample_rates
    if rates is None:
        rates = np.full(len(manifest), UNKNOWN_RATE, dtype=np.int64)
    known = rates != UNKNOWN_RATE
    num_unknown = int(len(manifest) - known.sum())
    if num_unknown:
        logger.info(
            "%s: %d of %d rows have no sample rate (no .meta.tsv sidecar): assumed %d Hz, as "
            "fairseq assumes; a file at another rate is still resampled, then cropped to the "
            "planned size",
            manifest.root,
            num_unknown,
            len(manifest),
            sample_rate,
        )
    other = known & (rates != sample_rate)
    if other.any():
        found = ", ".join(
            f"{r} Hz: {n}"
            for r, n in zip(*np.unique(rates[other], return_counts=True), strict=True)
        )
        logger.warning(
            "%s: %d of %d files are not at %d Hz (%s); they are resampled with soxr when loaded",
            manifest.root,
            int(other.sum()),
            len(manifest),
            sample_rate,
            found,
        )
    if manifest.num_channels is not None and (manifest.num_channels > 1).any():
        logger.info(
            "%s: %d files have more than one channel; channels are averaged to mono",
            manifest.root,
            int((manifest.num_channels > 1).sum()),
        )
    safe_rates = np.where(known, rates, sample_rate)
    return np.where(
        known, resampled_length(manifest.num_frames, safe_rates, sample_rate), manifest.num_frames
    )
