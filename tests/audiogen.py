"""Test audio written on the fly: sines plus a little noise, deterministic from a seed.

Import from any test as `import audiogen` (pytest puts tests/ on sys.path).

    audiogen.write_tone(tmp_path / "a.flac", 1.5, sample_rate=44_100, channels=2)
    paths = audiogen.make_corpus(tmp_path / "corpus", 12, (0.6, 2.0), 16_000, seed=0)
    audiogen.truncate(path, keep_fraction=0.5)       # cut a file short, header untouched
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def tone(
    num_frames: int, sample_rate: int = 16_000, channels: int = 1, seed: int = 0
) -> np.ndarray:
    """A random-pitch sine per channel plus noise, peak about 0.5. Shape: (S, channels) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames) / sample_rate
    freqs = rng.uniform(110.0, 880.0, size=channels)
    wav = 0.4 * np.sin(2 * np.pi * t[:, None] * freqs[None, :])  # (S, channels)
    wav += 0.05 * rng.standard_normal((num_frames, channels))
    return wav.astype(np.float32)


def write_tone(
    path: str | Path,
    seconds: float,
    sample_rate: int = 16_000,
    channels: int = 1,
    fmt: str | None = None,
    seed: int = 0,
) -> Path:
    """Write `seconds` of `tone` to `path` (parents created). Returns the path.

    `fmt` is a soundfile format ("WAV", "FLAC", "OGG"); None = from the extension. WAV is 16-bit
    PCM, so decoded samples equal `tone(...)` to within 1/32768.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    num_frames = round(seconds * sample_rate)
    sf.write(path, tone(num_frames, sample_rate, channels, seed), sample_rate, format=fmt)
    return path


def make_corpus(
    directory: str | Path,
    n: int,
    seconds_range: tuple[float, float] = (0.6, 2.0),
    sample_rate: int = 16_000,
    seed: int = 0,
) -> list[Path]:
    """`n` mono wav files `utt_000.wav`... with lengths uniform in `seconds_range`, sorted."""
    rng = np.random.default_rng(seed)
    seconds = rng.uniform(*seconds_range, size=n)
    return [
        write_tone(
            Path(directory) / f"utt_{i:03d}.wav", float(s), sample_rate, seed=seed * 1000 + i
        )
        for i, s in enumerate(seconds)
    ]


def truncate(path: str | Path, keep_fraction: float = 0.5) -> Path:
    """Cut a file to the first `keep_fraction` of its bytes, as an interrupted copy would."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path
