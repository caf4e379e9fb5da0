"""Audio constants and the three operations on a waveform: probe the header, decode, normalise.

Decoding is libsndfile (`soundfile`), resampling is soxr. Every wav2vec 2.0 checkpoint was
trained at 16 kHz, so that is the rate everything is converted to. No torch here: the manifest
command imports this module and should start fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000  # Hz, the rate of every wav2vec 2.0 checkpoint
LAYER_NORM_EPS = 1e-5  # fairseq's `F.layer_norm(wav, wav.shape)` default
RESAMPLE_QUALITY = "HQ"  # soxr's default; "VHQ" costs ~1.5x for no audible gain at 16 kHz
SAMPLE_RATES = (4_000, 768_000)
"""Header rates taken as audio (Hz). Below, a 40 KB file declaring 1 Hz resamples to hours."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says; nothing is decoded."""

    num_frames: int  # samples per channel, at `sample_rate`
    sample_rate: int  # Hz
    num_channels: int


def probe_audio(path: str | os.PathLike) -> AudioInfo:
    """Read only the header of `path`. Raises `soundfile.LibsndfileError` if it is not audio."""
    with sf.SoundFile(path) as f:
        check_sample_rate(f.samplerate)
        return AudioInfo(num_frames=f.frames, sample_rate=f.samplerate, num_channels=f.channels)


def check_sample_rate(rate: int) -> None:
    """ValueError for a header rate outside `SAMPLE_RATES` (a damaged or crafted header)."""
    low, high = SAMPLE_RATES
    if not low <= rate <= high:
        raise ValueError(f"its header declares {rate} Hz, outside {low}-{high} Hz")


def resampled_length(num_frames, from_rate, to_rate: int = SAMPLE_RATE):
    """Samples soxr returns for `num_frames` at `from_rate`: round-half-up of n * to / from.

    Works on ints and integer numpy arrays. Exact integer arithmetic, checked against soxr in
    tests, so a dataset's planned sizes equal the decoded lengths sample for sample.
    """
    num_frames = np.asarray(num_frames, dtype=np.int64)
    from_rate = np.asarray(from_rate, dtype=np.int64)
    length = (num_frames * (2 * to_rate) + from_rate) // (2 * from_rate)
    return int(length) if length.ndim == 0 else length


class DecodeError(ValueError):
    """A file that cannot be used as decoded: `reason` is a short label, `str(err)` is
    "reason (detail)"; the libsndfile/soxr error of an undecodable file is its `__cause__`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason


def decode_checked(
    path: str | os.PathLike | BinaryIO,
    sample_rate: int = SAMPLE_RATE,
    *,
    expected_frames: int | None = None,
    min_samples: int = 1,
    crop: tuple[int, int] | None = None,
) -> np.ndarray:
    """`load_audio`, refusing what would break a batch later. Shape: (S,).

    `crop=(start, length)` (in samples at `sample_rate`) returns only those samples: at the file's
    own rate, in a seekable format (WAV, FLAC, ...), only they are decoded (a 15.6 s crop of a
    35 s file decodes 15.6 s); otherwise the whole file is decoded and then cut, the same samples.

    Raises `DecodeError` when the file does not decode, decodes fewer frames than
    `expected_frames` (the manifest's count: a file truncated after it was listed), gives fewer
    than `min_samples` samples at `sample_rate` (what the model and its masking need), or holds
    NaN/Inf samples. Training and feature extraction both decode through here.
    """
    try:
        wav, file_frames = _decode(path, sample_rate, crop)
    except Exception as err:  # noqa: BLE001 (libsndfile, soxr, OS errors: all mean a bad file)
        raise DecodeError("cannot decode") from err
    if expected_frames is not None and file_frames < expected_frames:
        raise DecodeError(
            "shorter than its manifest",
            f"{file_frames} of {expected_frames} frames: truncated?",
        )
    if crop is not None and len(wav) < crop[1]:
        raise DecodeError("shorter than its manifest", f"{len(wav)} of {crop[1]} cropped samples")
    if len(wav) < min_samples:
        raise DecodeError("too short", f"{len(wav)} < {min_samples} samples the model needs")
    if not np.isfinite(wav).all():
        raise DecodeError("non-finite samples", f"{int((~np.isfinite(wav)).sum())} NaN/Inf samples")
    return wav


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode `path` to mono float32 at `sample_rate`. Shape: (S,).

    Channels are averaged (fairseq `feats.mean(-1)`); other rates are resampled with soxr.
    Raises on undecodable input, and ValueError on a file with no frames.
    """
    return _decode(path, sample_rate)[0]


def _decode(
    path: str | os.PathLike | BinaryIO, sample_rate: int, crop: tuple[int, int] | None = None
) -> tuple[np.ndarray, int]:
    """(mono float32 at `sample_rate` (S,) [cut to `crop`], frames in the file at its own rate)."""
    with sf.SoundFile(path) as f:
        check_sample_rate(f.samplerate)
        if crop is not None and f.samplerate == sample_rate and f.seekable():
            # Resampling would change the samples at the cut's edges: only at the file's own rate.
            start, length = crop
            f.seek(start)
            wav = f.read(length, dtype="float32", always_2d=True)  # (length, channels)
            return to_mono(wav, f.samplerate, sample_rate), f.frames
        wav = f.read(dtype="float32", always_2d=True)  # (S, channels)
        file_rate = f.samplerate
    if wav.shape[0] == 0:
        where = os.fspath(path) if isinstance(path, str | os.PathLike) else "audio bytes"
        raise ValueError(f"{where}: no audio frames")
    file_frames = wav.shape[0]
    mono = to_mono(wav, file_rate, sample_rate)
    if crop is not None:
        mono = mono[crop[0] : crop[0] + crop[1]]
    return mono, file_frames


def to_mono(wav: np.ndarray, from_rate: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decoded float audio -> mono float32 at `sample_rate`. Shape: (S, channels) -> (S',).

    Channels are averaged (fairseq `feats.mean(-1)`); other rates are resampled with soxr.
    """
    wav = wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]  # (S, channels) -> (S,)
    if from_rate != sample_rate:
        wav = soxr.resample(wav, from_rate, sample_rate, quality=RESAMPLE_QUALITY)
    return np.ascontiguousarray(wav, dtype=np.float32)


def normalize(wav: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the whole utterance, as fairseq's `normalize: true`.

    Shape: (S,) -> (S,). Equals `F.layer_norm(wav, wav.shape)` (biased variance, eps 1e-5),
    in numpy so that this module, and `w2vkit manifest` with it, never imports torch.
    Used by the LARGE (LV-60) models, which were trained on normalised audio.
    """
    mean = wav.mean(dtype=np.float64)
    var = np.square(wav - mean, dtype=np.float64).mean()
    return ((wav - mean) / np.sqrt(var + LAYER_NORM_EPS)).astype(np.float32)
