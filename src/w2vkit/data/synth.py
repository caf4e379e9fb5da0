"""Real speech, synthesised offline with eSpeak NG, for demos and tests that need speech, not sines.

eSpeak NG comes from the `espeakng-loader` wheel (the shared library plus its voice data); we call
its C API (`speak_lib.h`) through ctypes, so nothing is downloaded and no system package is needed.

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
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ESPEAK_SAMPLE_RATE = 22050  # Hz, eSpeak NG's native output rate (returned by espeak_Initialize)
RATE_RANGE_WPM = (80, 450)  # espeakRATE_MINIMUM, espeakRATE_MAXIMUM in speak_lib.h
PITCH_RANGE = (0, 100)  # espeakPITCH: base pitch, 50 = the voice's normal pitch
CLIP_SECONDS = (2.0, 8.0)  # target duration range of one corpus file
DEFAULT_VOICES = ("en", "en-us", "en+f3", "en+m3", "en-us+f2", "en+m1", "en+f4", "en-gb-scotland")

# speak_lib.h enums and flags.
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: retrieval through the callback, blocking
_INITIALIZE_DONT_EXIT = 0x8000  # without it a missing data folder calls exit() inside the library
_POS_CHARACTER = 1  # espeak_POSITION_TYPE
_CHARS_UTF8 = 1
_PARAM_RATE = 1  # espeak_PARAMETER
_PARAM_PITCH = 3
_EE_OK = 0

# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events)
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
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
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        # `path` is the folder that contains espeak-ng-data; buflength 0 = 60 ms chunks.
        sample_rate_hz = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path.parent).encode(), _INITIALIZE_DONT_EXIT
        )
        if sample_rate_hz != ESPEAK_SAMPLE_RATE:
            raise SynthesisUnavailable(
                f"espeak_Initialize({data_path.parent}) returned {sample_rate_hz}, "
                f"expected a sample rate of {ESPEAK_SAMPLE_RATE} Hz"
            )
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        # Kept on self: ctypes does not keep the callback alive, and a collected one crashes.
        self._callback = _SYNTH_CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples: int, events) -> int:
        # wav is NULL at the end of synthesis; num_samples may be 0 in between.
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = continue

    def select_voice(self, voice: str) -> None:
        if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ValueError(
                f"eSpeak NG has no voice {voice!r}; use a language ('en', 'en-us', "
                "'en-gb-scotland') optionally with a variant ('en+f3', 'en-us+m2')"
            )

    def speak(self, text: str, voice: str, rate_wpm: int, pitch: int) -> np.ndarray:
        """Synthesise `text`; returns int16 samples at ESPEAK_SAMPLE_RATE. Shape: (S,)."""
        self.select_voice(voice)
        self._lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
        self._lib.espeak_ng_SetRandSeed(1)  # breath/frication noise: same noise for every call
        self._chunks = []
        encoded = text.encode("utf-8") + b"\0"
        status = self._lib.espeak_Synth(
            encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with status {status} for text {text!r}")
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks)


_LOCK = threading.Lock()
_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    """The process-wide engine, made on first use; the caller holds `_LOCK`."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


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
    if not text.strip():
        raise ValueError("synthesize: text is empty")
    if not RATE_RANGE_WPM[0] <= rate_wpm <= RATE_RANGE_WPM[1]:
        raise ValueError(f"synthesize: rate_wpm={rate_wpm} is outside {RATE_RANGE_WPM}")
    if not PITCH_RANGE[0] <= pitch <= PITCH_RANGE[1]:
        raise ValueError(f"synthesize: pitch={pitch} is outside {PITCH_RANGE}")
    if sample_rate <= 0:
        raise ValueError(f"synthesize: sample_rate={sample_rate} must be positive")
    with _LOCK:
        samples = _engine().speak(text, voice, int(rate_wpm), int(pitch))
    wav = samples.astype(np.float32) / 32768.0
    if sample_rate == ESPEAK_SAMPLE_RATE:
        return wav
    wav = soxr.resample(wav, ESPEAK_SAMPLE_RATE, sample_rate).astype(np.float32)
    # Band-limiting can overshoot a near-full-scale peak; keep the promised range.
    return np.clip(wav, -1.0, 32767 / 32768)


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
    Synthesis runs in a fresh child process (see the module docstring for why).
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
    while total_samples < minutes * 60 * sample_rate:
        voice = voices[int(rng.integers(len(voices)))]
        rate_wpm = int(rng.integers(140, 221))
        pitch = int(rng.integers(25, 76))
        target_seconds = rng.uniform(*CLIP_SECONDS)
        # With clause pauses included, eSpeak takes 0.8-1.05x the nominal time for these words.
        num_words = max(2, round(target_seconds * rate_wpm / 60))
        text = random_sentence(rng, num_words)
        wav = synthesize(text, voice=voice, rate_wpm=rate_wpm, pitch=pitch, sample_rate=sample_rate)
        wav = wav[: int(CLIP_SECONDS[1] * sample_rate)]
        slug = voice.replace("+", "_")
        path = Path(slug) / f"{len(paths) // 10:03d}" / f"{slug}-{len(paths):05d}.flac"
        (out_dir / path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(out_dir / path, wav, sample_rate, format="FLAC", subtype="PCM_16")
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
