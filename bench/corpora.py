"""The corpora of issue 27: 1-hour English corpora that differ in text, voices, speaking rate,
file length, noise and sample rate, all synthesised with eSpeak NG (`w2vkit.data.synth`), plus
real recordings mixed in as a robustness check.

    python bench/corpora.py --list
    python bench/corpora.py prose --cache runs/small_budget            # builds runs/small_budget/corpus_prose
    python bench/corpora.py prose_long_noisy --minutes 5 --cache /tmp/c

| name | text | voices (x 8 accents) | rate (wpm) | file length | extra |
|---|---|---|---|---|---|
| `words_short` | random words of a 150-word vocabulary | m1 m2 f1 f2 klatt | 140-220 | 2-4 s | |
| `prose` | 1-3 sentences of Python stdlib docstrings | m3 m4 f3 Andy Annie Denis | 100-300 | 2-12 s | |
| `prose_long_noisy` | prose | klatt2 klatt3 Gene Jacky Lee Reed | 120-260 | 10-20 s | noise, 8/16/48 kHz |

No voice variant is one of the probe sets' (`small_budget.PROBE_*_VARIANTS`). The docstring prose
is real English with a large vocabulary, read from the running Python's own modules (nothing is
downloaded; another Python version gives other sentences). A corpus is built once per seed into
`CACHE/corpus_NAME/audio` (`done` marks a finished one) by a fresh child process, so the same
seed gives byte-identical files (eSpeak keeps state across calls in one process).

`--real-dir DIR` adds Debian's real recordings beside a corpus (`add_real`, into
`CACHE/corpus_NAME/real`; `small_budget.py --real-dir` makes its manifest over both): the WAV files of
`alsa-utils` (a voice naming loudspeakers) and the speech WAVs of `codec2-examples` (8 and 16 kHz
read speech, radio recordings). Get them with

    apt-get download alsa-utils codec2-examples
    dpkg -x alsa-utils_*.deb DIR && dpkg -x codec2-examples_*.deb DIR

Without DIR (or with nothing found in it) the corpus is built without them, and says so.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ACCENTS = (
    "en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
    "en-us-nyc",
)  # fmt: skip
DOC_MODULES = (
    "argparse", "calendar", "collections", "csv", "datetime", "decimal", "email.message",
    "fractions", "ftplib", "gzip", "http.server", "json", "logging", "mailbox", "pathlib",
    "random", "shutil", "smtplib", "socketserver", "statistics", "string", "tarfile", "textwrap",
    "threading", "unittest", "urllib.request", "zipfile",
)  # fmt: skip


@dataclass(frozen=True)
class CorpusSpec:
    text: str
    """"words" (random vocabulary words) or "prose" (docstring sentences)."""
    variants: tuple[str, ...]
    rate_wpm: tuple[int, int]
    seconds: tuple[float, float]
    seed: int
    noise_snr_db: tuple[float, float] | None = None
    sample_rates: tuple[int, ...] = (16000,)

    @property
    def voices(self) -> list[str]:
        return [f"{accent}+{variant}" for variant in self.variants for accent in ACCENTS]


CORPORA = {
    "words_short": CorpusSpec("words", ("m1", "m2", "f1", "f2", "klatt"), (140, 220), (2, 4), 401),
    "prose": CorpusSpec(
        "prose", ("m3", "m4", "f3", "Andy", "Annie", "Denis"), (100, 300), (2, 12), 402
    ),
    "prose_long_noisy": CorpusSpec(
        "prose",
        ("klatt2", "klatt3", "Gene", "Jacky", "Lee", "Reed"),
        (120, 260),
        (10, 20),
        403,
        noise_snr_db=(5.0, 25.0),
        sample_rates=(8000, 16000, 48000),
    ),
}


def prose_sentences() -> list[str]:
    """Sentences of 4-30 plain words from the docstrings of DOC_MODULES and their members."""
    texts = []
    for name in DOC_MODULES:
        module = importlib.import_module(name)
        texts.append(inspect.getdoc(module) or "")
        for _, member in sorted(vars(module).items()):
            if (inspect.isfunction(member) or inspect.isclass(member)) and getattr(
                member, "__module__", None
            ) == module.__name__:
                texts.append(inspect.getdoc(member) or "")
    sentences = []
    for text in texts:
        for raw in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            words = raw.rstrip(".!?").split()
            if 4 <= len(words) <= 30 and all(
                re.fullmatch(r"[A-Za-z][a-z]*[,;]?", w) for w in words
            ):
                sentences.append(" ".join(words) + ".")
    return sorted(set(sentences))


def _text(spec: CorpusSpec, rng: np.random.Generator, num_words: int, prose: list[str]) -> str:
    from w2vkit.data.synth import random_sentence

    if spec.text == "words":
        return random_sentence(rng, num_words)
    # 1-3 consecutive sentences (more when the file is long) from a random place.
    start, picked = int(rng.integers(len(prose))), []
    while sum(len(s.split()) for s in picked) < num_words:
        picked.append(prose[(start + len(picked)) % len(prose)])
    return " ".join(picked)


def _noise(rng: np.random.Generator, wav: np.ndarray, snr_db: float) -> np.ndarray:
    """Brown plus white noise (a hum-and-hiss background) at `snr_db` below the speech."""
    white = rng.standard_normal(len(wav))
    brown = np.cumsum(rng.standard_normal(len(wav)))
    brown -= np.convolve(brown, np.ones(401) / 401, mode="same")  # no DC drift
    noise = white / white.std() + brown / max(brown.std(), 1e-9)
    power = float(np.mean(wav.astype(np.float64) ** 2))
    noise *= np.sqrt(power / 10 ** (snr_db / 10) / np.mean(noise**2))
    return np.clip(wav + noise, -1.0, 1.0).astype(np.float32)


def write_corpus(name: str, out_dir: Path, minutes: float) -> int:
    """The worker (a fresh process): synthesise corpus `name` into `out_dir`; returns its files."""
    from w2vkit.data.synth import synthesize

    spec = CORPORA[name]
    rng = np.random.default_rng(spec.seed)
    prose = prose_sentences() if spec.text == "prose" else []
    voices, total, count = spec.voices, 0.0, 0
    while total < minutes * 60:
        voice = voices[int(rng.integers(len(voices)))]
        rate = int(rng.integers(spec.rate_wpm[0], spec.rate_wpm[1] + 1))
        pitch = int(rng.integers(25, 76))
        seconds = rng.uniform(*spec.seconds)
        text = _text(spec, rng, max(2, round(seconds * rate / 60)), prose)
        wav = synthesize(text, voice=voice, rate_wpm=rate, pitch=pitch)
        while len(wav) > spec.seconds[1] * 16000 and " " in text:  # shorter text, never cut audio
            text = text.rsplit(" ", 1)[0].rstrip(".,;") + "."
            wav = synthesize(text, voice=voice, rate_wpm=rate, pitch=pitch)
        if spec.noise_snr_db is not None:
            wav = _noise(rng, wav, rng.uniform(*spec.noise_snr_db))
        rate_hz = spec.sample_rates[int(rng.integers(len(spec.sample_rates)))]
        if rate_hz != 16000:
            wav = soxr.resample(wav, 16000, rate_hz).astype(np.float32)
        slug = voice.replace("+", "_")
        path = out_dir / slug / f"{count // 10:03d}" / f"{slug}-{count:05d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wav, rate_hz, format="FLAC", subtype="PCM_16")
        path.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
        total += len(wav) / rate_hz
        count += 1
    return count


def build(name: str, cache: Path, minutes: float = 60.0) -> Path:
    """`CACHE/corpus_NAME/audio`, built once (seeded) by a child process."""
    root = cache / f"corpus_{name}"
    if not (root / "done").is_file():
        subprocess.run(
            [sys.executable, __file__, "--worker", name, str(root / "audio"), str(minutes)],
            check=True,
        )
        (root / "done").write_text(f"{minutes} min\n")
    return root / "audio"


def real_recordings(real_dir: Path | None) -> list[Path]:
    """The extracted packages' recordings: alsa-utils' and codec2-examples' WAV files."""
    if real_dir is None:
        return []
    return sorted((real_dir / "usr/share/sounds/alsa").glob("*.wav")) + sorted(
        (real_dir / "usr/share/codec2/wav").glob("*.wav")
    )


def add_real(target: Path, real_dir: Path | None) -> str:
    """Copy the real recordings into `target` (CACHE/corpus_NAME/real) as mono FLAC; what was done."""
    found = real_recordings(real_dir)
    if not found:
        return (
            "no real recordings mixed in: pass --real-dir DIR after `apt-get download alsa-utils "
            "codec2-examples` and `dpkg -x` of both into DIR"
        )
    target.mkdir(parents=True, exist_ok=True)
    for path in found:
        wav, rate = sf.read(path, dtype="float32", always_2d=True)
        sf.write(target / f"{path.stem}.flac", wav.mean(axis=1), rate, format="FLAC")
    return f"mixed in {len(found)} real recordings from {real_dir}"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        write_corpus(argv[1], Path(argv[2]), float(argv[3]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", nargs="?", choices=sorted(CORPORA))
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path("runs/small_budget"))
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--real-dir", type=Path)
    args = parser.parse_args(argv)
    if args.list or args.name is None:
        for name, spec in CORPORA.items():
            print(f"{name}: {spec}")
        return
    audio = build(args.name, args.cache, args.minutes)
    print(add_real(audio.parent / "real", args.real_dir))
    print(audio)


if __name__ == "__main__":
    main()
