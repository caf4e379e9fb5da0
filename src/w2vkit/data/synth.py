"""Real speech, synthesised offline with eSpeak NG, for demos and tests that need speech, not sines.

eSpeak NG comes from the `espeakng-loader` wheel (the shared library plus its voice data); we call
its C API (`speak_lib.h`) through ctypes, so nothing is downloaded and no system package is needed.
eSpeak also reports where each phoneme starts (`synthesize_with_phones`, the corpus's phone labels)
and converts text to phonemes without speaking (`phonemize`, the phoneme tokenizer's g2p).

Determinism: eSpeak keeps synthesis state across utterances that no API call resets (for example
the pitch-flutter phase, a function-local static in `wavegen.c`; `espeak_Terminate` followed by
`espeak_Initialize` does not clear it either), so two `synthesize` calls with the same arguments in
one process can differ slightly (a few samples in length, a little pitch jitter). A fresh process
that makes the same calls in the same order produces identical audio, so `make_speech_corpus`
synthesises in a child process of its own.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from w2vkit.data.audio import resampled_length

ESPEAK_SAMPLE_RATE = 22050  # Hz, eSpeak NG's native output rate (returned by espeak_Initialize)
RATE_RANGE_WPM = (80, 450)  # espeakRATE_MINIMUM, espeakRATE_MAXIMUM in speak_lib.h
PITCH_RANGE = (0, 100)  # espeakPITCH: base pitch, 50 = the voice's normal pitch
CLIP_SECONDS = (2.0, 8.0)  # target duration range of one corpus file
SENTENCE_REUSE_PROBABILITY = 0.5  # a corpus file repeats an earlier file's sentence (other voice)
PHONE_SILENCE = "sil"  # the one label of every pause and of the audio before the first phone
_NO_STRESS = str.maketrans("", "", "ˈˌ")  # IPA primary and secondary stress marks
DEFAULT_VOICES = ("en", "en-us", "en+f3", "en+m3", "en-us+f2", "en+m1", "en+f4", "en-gb-scotland")

# speak_lib.h enums and flags.
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: retrieval through the callback, blocking
_INITIALIZE_PHONEME_EVENTS = 0x0001  # espeakEVENT_PHONEME events in the synthesis callback
_INITIALIZE_PHONEME_IPA = 0x0002  # ... naming each phoneme in IPA instead of eSpeak's mnemonics
_INITIALIZE_DONT_EXIT = 0x8000  # without it a missing data folder calls exit() inside the library
_EVENT_LIST_TERMINATED = 0  # espeak_EVENT_TYPE
_EVENT_PHONEME = 7
_PHONEMES_IPA = 0x02  # espeak_TextToPhonemes phonememode bits: IPA names,
_PHONEME_SEPARATOR = ord(" ") << 8  # ... one space between phonemes (bits 8-23), two between words
_POS_CHARACTER = 1  # espeak_POSITION_TYPE
_CHARS_UTF8 = 1
_PARAM_RATE = 1  # espeak_PARAMETER
_PARAM_PITCH = 3
_EE_OK = 0


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """`espeak_EVENT` (speak_lib.h). `sample` is the event's position in this call's output."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms
        ("sample", ctypes.c_int),  # samples at ESPEAK_SAMPLE_RATE
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events)
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)

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


class SynthesisUnavailable(RuntimeError):
    """eSpeak NG (the `espeakng-loader` package, its library or its voice data) is missing."""


class _Engine:
    """The process-wide eSpeak NG instance; every call must hold `_LOCK`."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:
            raise SynthesisUnavailable(
                "speech synthesis needs eSpeak NG from the `espeakng-loader` package: "
                "pip install espeakng-loader (a dependency of w2vkit)"
            ) from err
        library_path = espeakng_loader.get_library_path()
        try:
            lib = ctypes.CDLL(library_path)
        except OSError as err:
            raise SynthesisUnavailable(
                f"cannot load libespeak-ng from {library_path}: {err}"
            ) from err
        try:
            data_path = Path(espeakng_loader.get_data_path())
        except RuntimeError as err:
            raise SynthesisUnavailable(f"eSpeak NG voice data is missing: {err}") from err
        # Checked here: with a bad path espeak_Initialize prints an error but still succeeds.
        if not (data_path / "phontab").is_file():
            raise SynthesisUnavailable(
                f"eSpeak NG voice data is incomplete: no phontab in {data_path}"
            )

        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_TextToPhonemes.argtypes = [
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        # `path` is the folder that contains espeak-ng-data; buflength 0 = 60 ms chunks.
        # Phoneme events do not change the audio; they give each phone's start sample.
        options = _INITIALIZE_DONT_EXIT | _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA
        sample_rate_hz = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path.parent).encode(), options
        )
        if sample_rate_hz != ESPEAK_SAMPLE_RATE:
            raise SynthesisUnavailable(
                f"espeak_Initialize({data_path.parent}) returned {sample_rate_hz}, "
                f"expected a sample rate of {ESPEAK_SAMPLE_RATE} Hz"
            )
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        self._phone_starts: list[tuple[int, str]] = []  # (sample, IPA name) per phoneme event
        self._unspoken_voice_changes = 0  # voice selections since the last synthesis
        # Kept on self: ctypes does not keep the callback alive, and a collected one crashes.
        self._callback = _SYNTH_CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples: int, events) -> int:
        # wav is NULL at the end of synthesis; num_samples may be 0 in between.
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_PHONEME:
                # id.string is NUL-terminated unless the name fills all 8 bytes.
                name = bytes(event.id.string).split(b"\0")[0].decode("utf-8", "replace")
                self._phone_starts.append((int(event.sample), name))
            i += 1
        return 0  # 0 = continue

    def select_voice(self, voice: str) -> None:
        if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ValueError(
                f"eSpeak NG has no voice {voice!r}; use a language ('en', 'en-us', "
                "'en-gb-scotland') optionally with a variant ('en+f3', 'en-us+m2')"
            )
        self._unspoken_voice_changes += 1

    def _flush_voice_changes(self) -> None:
        """Let eSpeak consume the voice changes that no synthesis has consumed yet.

        Each voice selection queues a command that only synthesis takes off the queue. With 25 or
        more queued (voice checks, `phonemize` calls), the next synthesis loses its first phoneme
        event (eSpeak NG 1.52): its audio is right but its first phone would read as silence.
        Synthesising an empty text empties the queue.
        """
        self._lib.espeak_Synth(b"\0", 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        self._unspoken_voice_changes = 0

    def speak(
        self, text: str, voice: str, rate_wpm: int, pitch: int
    ) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Synthesise `text`: int16 samples at ESPEAK_SAMPLE_RATE (S,), and the phoneme events
        as (start sample, IPA name) in order."""
        if self._unspoken_voice_changes:
            self._flush_voice_changes()
        self.select_voice(voice)
        self._lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
        self._lib.espeak_ng_SetRandSeed(1)  # breath/frication noise: same noise for every call
        self._chunks = []
        self._phone_starts = []
        encoded = text.encode("utf-8") + b"\0"
        status = self._lib.espeak_Synth(
            encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        self._unspoken_voice_changes = 0
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with status {status} for text {text!r}")
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        return samples, self._phone_starts

    def text_to_phonemes(self, text: str, voice: str) -> list[str]:
        """IPA phonemes of `text`, one string per clause: phonemes split by one space, words by
        two (espeak_TextToPhonemes, which speaks nothing)."""
        self.select_voice(voice)
        buffer = ctypes.create_string_buffer(text.encode("utf-8"))
        # The library advances this pointer clause by clause and sets it to NULL at the end.
        cursor = ctypes.c_char_p(ctypes.addressof(buffer))
        clauses = []
        while cursor.value:
            out = self._lib.espeak_TextToPhonemes(
                ctypes.byref(cursor), _CHARS_UTF8, _PHONEMES_IPA | _PHONEME_SEPARATOR
            )
            clauses.append((out or b"").decode("utf-8", "replace"))
        return clauses


_LOCK = threading.Lock()
_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    """The process-wide engine, made on first use; the caller holds `_LOCK`."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


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
    with _LOCK:
        samples, phone_starts = _engine().speak(text, voice, int(rate_wpm), int(pitch))
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
    with _LOCK:
        clauses = _engine().text_to_phonemes(text, voice)
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
    with _LOCK:  # a missing library or an unknown voice fails here, with its own error
        for voice in voices:
            _engine().select_voice(voice)
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
