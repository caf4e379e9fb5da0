"""Real speech, synthesised offline with eSpeak NG, for demos and tests that need speech, not sines.

eSpeak NG runs in-process through ctypes (`w2vkit.data.espeak`, from the `espeakng-loader` wheel:
nothing is downloaded, no system package is needed). eSpeak also reports where each phoneme starts
(`synthesize_with_phones`, the corpus's phone labels) and converts text to phonemes without
speaking (`phonemize`, the phoneme tokenizer's g2p).

Determinism: eSpeak keeps synthesis state across utterances that no API call resets (for example
the pitch-flutter phase, a function-local static in `wavegen.c`; `espeak_Terminate` followed by
`espeak_Initialize` does not clear it either), so two `synthesize` calls with the same arguments in
one process can differ slightly (a few samples in length, a little pitch jitter). A fresh process
that makes the same calls in the same order produces identical audio, so `make_speech_corpus`
synthesises in a child process of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from w2vkit.data.audio import resampled_length
from w2vkit.data.espeak import ESPEAK_SAMPLE_RATE, LOCK, engine

RATE_RANGE_WPM = (80, 450)  # espeakRATE_MINIMUM, espeakRATE_MAXIMUM in speak_lib.h
PITCH_RANGE = (0, 100)  # espeakPITCH: base pitch, 50 = the voice's normal pitch
CLIP_SECONDS = (2.0, 8.0)  # target duration range of one corpus file
SENTENCE_REUSE_PROBABILITY = 0.5  # a corpus file repeats an earlier file's sentence (other voice)
PHONE_SILENCE = "sil"  # the one label of every pause and of the audio before the first phone
_NO_STRESS = str.maketrans("", "", "ˈˌ")  # IPA primary and secondary stress marks
DEFAULT_VOICES = ("en", "en-us", "en+f3", "en+m3", "en-us+f2", "en+m1", "en+f4", "en-gb-scotland")

# A small vocabulary of common, unambiguous English words; sentences are drawn from it at random.
_WORD_TEXT = """
    the a one two three four five six seven eight nine ten red green blue yellow black white
    small large old new early late good bright quiet loud happy simple warm cold long short
    house river garden window mountain forest table letter morning evening winter summer city
    road bridge market island station village doctor teacher farmer sailor painter child friend
    bird horse apple bread water paper music story question answer number picture journey
    walk run read write speak listen carry build open close follow remember visit bring find
    keep watch travel learn begin finish and but then because while after before under over
    near behind across through today always never often slowly quickly together again here
"""
WORDS = tuple(_WORD_TEXT.split())


@dataclass(frozen=True)
class Phone:
    """One phone of synthesised speech: samples [start, end) of the returned audio."""

    start: int
    end: int
    name: str  # IPA without stress marks, or PHONE_SILENCE


def synthesize(
    text: str, *, voice: str = "en", rate_wpm: int = 175, pitch: int = 50, sample_rate: int = 16000
) -> np.ndarray:
    """Speak `text` with eSpeak NG; returns float32 samples in [-1, 1). Shape: (S,).

    Args:
        voice: an eSpeak NG voice name, optionally with a variant: "en", "en-us", "en+f3".
        rate_wpm: speaking rate in words per minute, 80 to 450.
        pitch: base pitch, 0 to 100 (50 = the voice's normal pitch).
        sample_rate: output rate in Hz; eSpeak's 22050 Hz output is resampled with soxr.
    """
    wav, _ = synthesize_with_phones(
        text, voice=voice, rate_wpm=rate_wpm, pitch=pitch, sample_rate=sample_rate
    )
    return wav


def synthesize_with_phones(
    text: str, *, voice: str = "en", rate_wpm: int = 175, pitch: int = 50, sample_rate: int = 16000
) -> tuple[np.ndarray, list[Phone]]:
    """`synthesize`, plus the phones that eSpeak NG spoke, in order, covering the audio.

    eSpeak's phoneme events give each phone's first sample; a phone lasts until the next one
    starts. The audio before the first phone and eSpeak's pauses are PHONE_SILENCE (consecutive
    silences merged). Boundaries are mapped to `sample_rate` as soxr maps lengths.
    """
    if not text.strip():
        raise ValueError("synthesize: text is empty")
    if not RATE_RANGE_WPM[0] <= rate_wpm <= RATE_RANGE_WPM[1]:
        raise ValueError(f"synthesize: rate_wpm={rate_wpm} is outside {RATE_RANGE_WPM}")
    if not PITCH_RANGE[0] <= pitch <= PITCH_RANGE[1]:
        raise ValueError(f"synthesize: pitch={pitch} is outside {PITCH_RANGE}")
    if sample_rate <= 0:
        raise ValueError(f"synthesize: sample_rate={sample_rate} must be positive")
    with LOCK:
        samples, phone_starts = engine().speak(text, voice, int(rate_wpm), int(pitch))
    wav = samples.astype(np.float32) / 32768.0
    if sample_rate != ESPEAK_SAMPLE_RATE:
        wav = soxr.resample(wav, ESPEAK_SAMPLE_RATE, sample_rate).astype(np.float32)
        # Band-limiting can overshoot a near-full-scale peak; keep the promised range.
        wav = np.clip(wav, -1.0, 32767 / 32768)
    return wav, _phones(phone_starts, len(samples), len(wav), sample_rate)


def _phones(
    starts: list[tuple[int, str]], num_native: int, num_samples: int, sample_rate: int
) -> list[Phone]:
    """Phone intervals at `sample_rate` from (native start sample, IPA name) events."""
    names = [PHONE_SILENCE] + [phone_name(name) for _, name in starts]
    native = [0] + [min(max(start, 0), num_native) for start, _ in starts] + [num_native]
    bounds = resampled_length(np.array(native), ESPEAK_SAMPLE_RATE, sample_rate)
    bounds = np.maximum.accumulate(np.minimum(bounds, num_samples))  # (P + 1,) non-decreasing
    bounds[-1] = num_samples
    phones: list[Phone] = []
    for name, start, end in zip(names, bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        if end == start:
            continue
        if phones and name == PHONE_SILENCE and phones[-1].name == PHONE_SILENCE:
            phones[-1] = Phone(phones[-1].start, end, PHONE_SILENCE)
        else:
            phones.append(Phone(start, end, name))
    return phones


def phone_name(ipa: str) -> str:
    """A phone's label: its IPA name without stress marks; eSpeak's pauses (no IPA) are silence."""
    name = ipa.translate(_NO_STRESS)
    return name if name else PHONE_SILENCE


def phonemize(text: str, *, voice: str = "en", stress: bool = False) -> list[list[str]]:
    """eSpeak NG's IPA phonemes of `text`, one list per word (grapheme to phoneme, no audio).

    `stress=False` strips the stress marks, giving the phone names of `synthesize_with_phones`;
    with `stress=True` a stressed vowel keeps its mark ("ˈəʊ"). Punctuation yields no phonemes.
    """
    with LOCK:
        clauses = engine().text_to_phonemes(text, voice)
    words = [word for clause in clauses for word in clause.split("  ")]
    phonemes = [[p if stress else p.translate(_NO_STRESS) for p in w.split()] for w in words]
    return [[p for p in word if p] for word in phonemes if any(word)]


def random_sentence(rng: np.random.Generator, num_words: int) -> str:
    """`num_words` words from WORDS, split into clauses so that the speech has pauses."""
    words = [str(w) for w in rng.choice(WORDS, size=num_words)]
    text = []
    for i, word in enumerate(words):
        end_of_clause = i == num_words - 1 or rng.random() < 0.15
        text.append(word + ("." if end_of_clause else ""))
    return " ".join(text).capitalize()


def make_speech_corpus(
    out_dir: str | Path,
    *,
    minutes: float,
    seed: int = 0,
    sample_rate: int = 16000,
    voices: Sequence[str] = DEFAULT_VOICES,
) -> list[Path]:
    """Write about `minutes` of synthetic speech as 16-bit FLAC files of ~2-8 s; returns their paths.

    Files go to `out_dir/<voice>/<group>/<voice>-<index>.flac` (nested like a real corpus). Voice,
    rate and pitch vary per file, drawn from `seed`; the same seed gives byte-identical files.
    About half the files repeat the sentence (and rate) of an earlier file in a voice drawn
    afresh, so that probes can hold out sentences as well as voices. A text that would run past
    8 s loses words until it fits: the audio is never cut, so every transcript matches its audio.

    Beside each `X.flac` go `X.txt` (the transcript, one line) and `X.json`: text, voice,
    sentence (an id shared by the files that speak the same text), rate_wpm, pitch,
    sample_rate, num_samples, and phones as [start, end, name] sample intervals that cover the
    audio (see `synthesize_with_phones`). Synthesis runs in a fresh child process (see the
    module docstring for why).
    """
    if minutes <= 0:
        raise ValueError(f"make_speech_corpus: minutes={minutes} must be positive")
    if not voices:
        raise ValueError("make_speech_corpus: voices is empty")
    if any("," in v for v in voices):
        raise ValueError(f"make_speech_corpus: voice names cannot contain ',': {list(voices)}")
    if sample_rate <= 0:
        raise ValueError(f"make_speech_corpus: sample_rate={sample_rate} must be positive")
    with LOCK:  # a missing library or an unknown voice fails here, with its own error
        for voice in voices:
            engine().select_voice(voice)
    out_dir = Path(out_dir)
    command = [
        sys.executable, "-m", "w2vkit.data.synth", str(out_dir), f"--minutes={minutes}",
        f"--seed={seed}", f"--sample-rate={sample_rate}", f"--voices={','.join(voices)}",
    ]  # fmt: skip
    # The child must import this very package, wherever it was imported from here.
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    )
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"speech synthesis worker failed:\n{done.stderr.strip()}")
    return [out_dir / line for line in done.stdout.splitlines() if line]


def _write_corpus(
    out_dir: Path, minutes: float, seed: int, sample_rate: int, voices: Sequence[str]
) -> list[Path]:
    """The worker side of make_speech_corpus; returns paths relative to out_dir."""
    rng = np.random.default_rng(seed)
    total_samples = 0
    paths: list[Path] = []
    spoken: list[tuple[str, int]] = []  # (text, rate_wpm) of every file so far
    sentence_ids: dict[str, int] = {}  # text -> id, numbered in order of first appearance
    while total_samples < minutes * 60 * sample_rate:
        voice = voices[int(rng.integers(len(voices)))]
        pitch = int(rng.integers(25, 76))
        if spoken and rng.random() < SENTENCE_REUSE_PROBABILITY:
            text, rate_wpm = spoken[int(rng.integers(len(spoken)))]
        else:
            rate_wpm = int(rng.integers(140, 221))
            # With clause pauses included, eSpeak takes 0.8-1.05x the nominal time for these words.
            num_words = max(2, round(rng.uniform(*CLIP_SECONDS) * rate_wpm / 60))
            text = random_sentence(rng, num_words)
        wav, phones = synthesize_with_phones(
            text, voice=voice, rate_wpm=rate_wpm, pitch=pitch, sample_rate=sample_rate
        )
        while len(wav) > CLIP_SECONDS[1] * sample_rate and " " in text:
            # Shorter text rather than cut audio: the transcript must match what is heard.
            text = text.rsplit(" ", 1)[0].rstrip(".") + "."
            wav, phones = synthesize_with_phones(
                text, voice=voice, rate_wpm=rate_wpm, pitch=pitch, sample_rate=sample_rate
            )
        spoken.append((text, rate_wpm))
        slug = voice.replace("+", "_")
        path = Path(slug) / f"{len(paths) // 10:03d}" / f"{slug}-{len(paths):05d}.flac"
        (out_dir / path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(out_dir / path, wav, sample_rate, format="FLAC", subtype="PCM_16")
        (out_dir / path.with_suffix(".txt")).write_text(text + "\n", encoding="utf-8")
        description = {
            "text": text,
            "voice": voice,
            "sentence": sentence_ids.setdefault(text, len(sentence_ids)),
            "rate_wpm": rate_wpm,
            "pitch": pitch,
            "sample_rate": sample_rate,
            "num_samples": len(wav),
            "phones": [[p.start, p.end, p.name] for p in phones],
        }
        with open(out_dir / path.with_suffix(".json"), "w", encoding="utf-8") as f:
            json.dump(description, f, ensure_ascii=False)
            f.write("\n")
        paths.append(path)
        total_samples += len(wav)
    return paths


def _main() -> None:
    parser = argparse.ArgumentParser(description="make_speech_corpus worker (prints file paths)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--sample-rate", type=int, required=True)
    parser.add_argument("--voices", required=True, help="comma-separated eSpeak NG voice names")
    args = parser.parse_args()
    voices = args.voices.split(",")
    for path in _write_corpus(args.out_dir, args.minutes, args.seed, args.sample_rate, voices):
        print(path.as_posix())


if __name__ == "__main__":
    _main()
