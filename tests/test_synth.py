"""eSpeak NG speech synthesis: the audio is speech-like, parameters act, the corpus is reproducible."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
import soundfile as sf

from w2vkit.data import espeak
from w2vkit.data.synth import make_speech_corpus, synthesize

pytest.importorskip("espeakng_loader")

SR = 16000


def frame_rms(wav: np.ndarray, frame_seconds: float = 0.01) -> np.ndarray:
    n = int(SR * frame_seconds)
    frames = wav[: len(wav) // n * n].reshape(-1, n)  # (frames, n)
    return np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))


def speech_segments(wav: np.ndarray, min_gap_frames: int = 5) -> list[tuple[int, int]]:
    """Runs of frames above 10 % of the peak RMS, merging gaps shorter than min_gap_frames."""
    active = frame_rms(wav) > 0.1 * frame_rms(wav).max()
    segments: list[tuple[int, int]] = []
    for i in np.flatnonzero(active):
        if segments and i - segments[-1][1] <= min_gap_frames:
            segments[-1] = (segments[-1][0], i)
        else:
            segments.append((i, i))
    return segments


def median_f0_hz(wav: np.ndarray) -> float:
    """Median autocorrelation pitch (60-400 Hz) over loud 40 ms frames: independent of eSpeak."""
    n = int(0.04 * SR)
    estimates = []
    for start in range(0, len(wav) - n, n):
        frame = wav[start : start + n].astype(np.float64)
        if np.sqrt((frame**2).mean()) < 0.05:
            continue
        frame -= frame.mean()
        autocorr = np.correlate(frame, frame, "full")[n - 1 :]
        lo, hi = SR // 400, SR // 60
        estimates.append(SR / (lo + np.argmax(autocorr[lo:hi])))
    assert estimates, "no voiced frames"
    return float(np.median(estimates))


def test_speech_is_loud_float32_and_in_range():
    wav = synthesize("The quick brown fox jumps over the lazy dog.")
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert np.all(np.isfinite(wav)) and np.abs(wav).max() < 1.0
    assert np.abs(wav).max() > 0.2 and wav.std() > 0.02
    assert 1.0 < len(wav) / SR < 5.0


def test_envelope_has_one_burst_per_word_with_pauses_between():
    wav = synthesize("One. Two. Three. Four. Five.")
    segments = speech_segments(wav)
    assert len(segments) == 5
    # Real pauses: at least 100 ms of low energy between consecutive words.
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(segments)]
    assert min(gaps) >= 10
    assert (frame_rms(wav) < 0.01 * frame_rms(wav).max()).mean() > 0.3


def test_duration_grows_with_text_length():
    sentence = "Seven green birds fly over the river. "
    seconds = [len(synthesize(sentence * k)) / SR for k in (1, 2, 4)]
    assert seconds[0] < seconds[1] < seconds[2]
    assert 3.0 < seconds[2] / seconds[0] < 5.0


def test_rate_changes_duration():
    text = "the quick brown fox jumps over the lazy dog"
    slow = len(synthesize(text, rate_wpm=100))
    fast = len(synthesize(text, rate_wpm=300))
    # Nominally 3x; eSpeak's fixed-length parts (plosive bursts, edges) make it a little less.
    assert 2.0 < slow / fast < 3.5


def test_pitch_parameter_and_voice_variant_move_f0():
    text = "we were away a year ago"
    low = median_f0_hz(synthesize(text, pitch=10))
    high = median_f0_hz(synthesize(text, pitch=90))
    female = median_f0_hz(synthesize(text, pitch=50, voice="en+f3"))
    assert 50 < low < high < 250
    assert high / low > 1.5
    assert female > 1.5 * median_f0_hz(synthesize(text, pitch=50))


def test_sample_rate_is_honoured():
    text = "Hello there, how are you today?"
    native = synthesize(text, sample_rate=espeak.ESPEAK_SAMPLE_RATE)
    wide = synthesize(text, sample_rate=8000)
    # Repeated calls may differ by a few samples (see the module docstring), hence the tolerance.
    assert abs(len(wide) / 8000 - len(native) / espeak.ESPEAK_SAMPLE_RATE) < 0.01


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": "  "}, "text is empty"),
        ({"text": "hi", "voice": "xx-nosuch"}, "no voice 'xx-nosuch'"),
        ({"text": "hi", "rate_wpm": 20}, "rate_wpm=20"),
        ({"text": "hi", "pitch": 101}, "pitch=101"),
        ({"text": "hi", "sample_rate": 0}, "sample_rate=0"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    text = kwargs.pop("text")
    with pytest.raises(ValueError, match=message):
        synthesize(text, **kwargs)


def test_missing_espeak_package_is_reported(monkeypatch):
    monkeypatch.setattr(espeak, "_ENGINE", None)
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # makes the import fail
    with pytest.raises(espeak.SynthesisUnavailable, match="espeakng-loader"):
        synthesize("hello")


def test_corpus_is_nested_flac_of_the_asked_length(tmp_path):
    paths = make_speech_corpus(tmp_path / "c", minutes=0.5, seed=3, voices=("en", "en+f3"))
    durations = []
    for path in paths:
        assert path.suffix == ".flac" and path.is_file()
        assert len(path.relative_to(tmp_path / "c").parts) == 3  # voice/group/file
        info = sf.info(str(path))
        assert info.samplerate == SR and info.channels == 1 and info.subtype == "PCM_16"
        durations.append(info.duration)
    assert sum(durations) >= 30.0 and sum(durations) - durations[-1] < 30.0
    assert 1.5 < min(durations) and max(durations) <= 8.0
    assert {p.relative_to(tmp_path / "c").parts[0] for p in paths} == {"en", "en_f3"}
    assert np.std(durations) > 0.3  # lengths vary


def test_same_seed_same_bytes_other_seed_other_audio(tmp_path):
    def corpus(name, seed):
        paths = make_speech_corpus(tmp_path / name, minutes=0.2, seed=seed)
        files = [p.with_suffix(s) for p in paths for s in (".flac", ".json", ".txt")]
        return [p.relative_to(tmp_path / name) for p in paths], [f.read_bytes() for f in files]

    names_a, bytes_a = corpus("a", 7)
    names_b, bytes_b = corpus("b", 7)
    _, bytes_c = corpus("c", 8)
    assert names_a == names_b and bytes_a == bytes_b
    assert bytes_a[0] != bytes_c[0]


def test_corpus_argument_errors_are_raised_before_the_worker_starts(tmp_path):
    with pytest.raises(ValueError, match="no voice 'xx-nosuch'"):
        make_speech_corpus(tmp_path, minutes=0.1, voices=("en", "xx-nosuch"))
    with pytest.raises(ValueError, match="minutes=0"):
        make_speech_corpus(tmp_path, minutes=0)
    assert not any(tmp_path.iterdir())


def test_corpus_worker_failure_is_reported(tmp_path):
    (tmp_path / "taken").write_text("a file where the corpus folder should go")
    with pytest.raises(RuntimeError, match="speech synthesis worker failed"):
        make_speech_corpus(tmp_path / "taken", minutes=0.05)
