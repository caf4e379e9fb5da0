"""eSpeak NG through ctypes: the one process-wide engine behind `w2vkit.data.synth`.

eSpeak NG comes from the `espeakng-loader` wheel (the shared library plus its voice data); its C API
(`speak_lib.h`) is called through ctypes, so nothing is downloaded and no system package is needed.
The library keeps global state: every call goes through `engine()` while holding `LOCK`.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

ESPEAK_SAMPLE_RATE = 22050  # Hz, eSpeak NG's native output rate (returned by espeak_Initialize)

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


class SynthesisUnavailable(RuntimeError):
    """eSpeak NG (the `espeakng-loader` package, its library or its voice data) is missing."""


class _Engine:
    """The process-wide eSpeak NG instance; every call must hold `LOCK`."""

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


LOCK = threading.Lock()
_ENGINE: _Engine | None = None


def engine() -> _Engine:
    """The process-wide engine, made on first use; the caller holds `LOCK`."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


__all__ = ["ESPEAK_SAMPLE_RATE", "LOCK", "SynthesisUnavailable", "engine"]
