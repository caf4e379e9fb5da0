"""`AudioDataset`: the unlabeled audio of one manifest, decoded to mono 16 kHz on demand.

fairseq's `FileAudioDataset`, with three differences: files at other rates are resampled (fairseq
raises), sizes are known at the target rate before anything is decoded (from the manifest's
sidecar), and a file that fails to decode returns None instead of killing the run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from w2vkit.data.audio import (
    SAMPLE_RATE,
    DecodeError,
    decode_checked,
    normalize,
    resampled_length,
)
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
        min_decoded_samples: a decode shorter than this (what the model and its masking need) is
            a failure, like an undecodable file, a truncated one or one with NaN/Inf samples.

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
        min_decoded_samples: int = 1,
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
        self.min_decoded_samples = min_decoded_samples
        self.num_failed = 0  # decode failures seen by this process
        self._logged: set[int] = set()  # items whose failure this process has logged

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
        self.num_frames = manifest.num_frames[keep]  # (N,) frames the manifest lists, file rate
        limit = np.iinfo(np.int64).max if max_samples is None else max_samples
        self.sizes = np.minimum(self.num_samples, limit)  # (N,) samples in a batch, at most
        # Paths as one byte buffer + offsets, not a list of str: DataLoader workers would
        # otherwise touch a million refcounts and copy the pages (pytorch issue 13246).
        encoded = [os.fsencode(manifest.paths[i]) for i in self.manifest_rows]
        self._path_bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._path_ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.sizes)

    def fingerprint(self) -> str:
        """Names the items: a hash of every relative path and size (16 hex digits). The root is
        left out, so a corpus moved elsewhere keeps its fingerprint."""
        digest = hashlib.sha256(self._path_ends.tobytes())
        digest.update(self._path_bytes.tobytes())
        digest.update(np.asarray(self.num_samples, dtype=np.int64).tobytes())
        return digest.hexdigest()[:16]

    def path(self, index: int) -> Path:
        start = int(self._path_ends[index - 1]) if index > 0 else 0
        relative = os.fsdecode(self._path_bytes[start : self._path_ends[index]].tobytes())
        return self.root / relative

    def decode(self, index: int, *, min_samples: int | None = None) -> torch.Tensor:
        """Decode item `index` (mono, `sample_rate`, normalised if asked). Shape: (S,).

        Raises `DecodeError` for a file that does not decode, decodes shorter than the manifest
        says or than `min_samples` (default `min_decoded_samples`), or holds non-finite samples
        (`decode_checked`).
        """
        wav = decode_checked(
            self.path(index),
            self.sample_rate,
            expected_frames=int(self.num_frames[index]),
            min_samples=self.min_decoded_samples if min_samples is None else min_samples,
        )
        return torch.from_numpy(normalize(wav) if self.normalize else wav)

    def load(self, index: int) -> torch.Tensor | None:
        """`decode`, or None for a failed item: counted in `num_failed`, its path logged once,
        so that one bad file never stops training."""
        try:
            return self.decode(index)
        except DecodeError as err:
            self.num_failed += 1
            if index not in self._logged:
                self._logged.add(index)
                logger.warning("skipping %s (item %d): %s", self.path(index), index, describe(err))
            return None


def describe(err: DecodeError) -> str:
    """The failure and, for an undecodable file, libsndfile's or soxr's own words."""
    return f"{err}: {err.__cause__}" if err.__cause__ is not None else str(err)


_WARNED: set[tuple] = set()


def _warn_once(message: str, *args) -> None:
    """A data notice once per process: the pre-flight check and the loader both read a split."""
    if (message, *args) not in _WARNED:
        _WARNED.add((message, *args))
        logger.warning(message, *args)


def _target_lengths(manifest: Manifest, sample_rate: int) -> np.ndarray:
    """Samples per row at `sample_rate`: exact for rows with a known rate, else the frames."""
    rates = manifest.sample_rates
    if rates is None:
        rates = np.full(len(manifest), UNKNOWN_RATE, dtype=np.int64)
    known = rates != UNKNOWN_RATE
    num_unknown = int(len(manifest) - known.sum())
    if num_unknown:
        _warn_once(
            "%s: %d of %d rows have no sample rate (no .meta.tsv sidecar): their frame counts are "
            "taken as %d Hz samples, as fairseq does; a file at another rate has another length "
            "than planned (cropped if shorter). `w2vkit manifest AUDIO_DIR` writes the sidecar",
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
        _warn_once(
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
