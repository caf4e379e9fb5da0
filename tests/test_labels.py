"""Frame labels: the model's grid, phones from eSpeak NG's events, and the label files."""

from __future__ import annotations

import difflib
import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from w2vkit.data.labels import (
    PHONE_SILENCE,
    frame_centres,
    frame_count,
    frame_phone_labels,
    read_frame_labels,
    read_utterance_labels,
    write_frame_labels,
    write_utterance_labels,
)
from w2vkit.data.synth import Phone, make_speech_corpus, phonemize, synthesize_with_phones
from w2vkit.model.config import BASE_CONV_LAYERS
from w2vkit.model.feature_extractor import frame_geometry

SR = 16000
LENGTHS = [0, 1, 399, 400, 401, 719, 720, 721, 1039, 1040, 16000, 16399, 16400, 48321]


def conv_stack_frames(num_samples: int) -> int:
    """Frames a real stack of BASE-shaped convolutions returns (0 when the input is too short)."""
    x = torch.zeros(1, 1, num_samples)
    for _, kernel, stride in BASE_CONV_LAYERS:
        if x.shape[-1] < kernel:
            return 0
        x = nn.Conv1d(1, 1, kernel, stride)(x)
    return x.shape[-1]


@pytest.mark.parametrize("num_samples", LENGTHS + list(range(300, 1500, 37)))
def test_frame_count_equals_the_conv_stack_and_labels_fill_it(num_samples):
    expected = conv_stack_frames(num_samples)
    assert frame_count(num_samples) == expected
    phones = [Phone(0, num_samples // 2, "a"), Phone(num_samples // 2, num_samples, "b")]
    assert frame_phone_labels(phones, num_samples).shape == (expected,)
    assert frame_phone_labels([], num_samples).shape == (expected,)


def test_grid_is_20ms_frames_of_25ms_centred_at_320i_plus_200():
    assert frame_geometry(BASE_CONV_LAYERS) == (400, 320)
    assert [frame_count(n) for n in (399, 400, 719, 720)] == [0, 1, 1, 2]
    assert frame_centres(16000).tolist() == [320 * i + 200 for i in range(49)]


def test_label_is_the_phone_at_the_frame_centre():
    # Frame centres 200, 520, 840, 1160; a boundary exactly on a centre gives the later phone.
    phones = [Phone(100, 520, "a"), Phone(520, 900, "b"), Phone(900, 1100, "c")]
    labels = frame_phone_labels(phones, 1360)  # 4 frames
    assert labels.tolist() == ["a", "b", "b", PHONE_SILENCE]  # 1160 is after every phone
    assert frame_phone_labels([Phone(250, 1360, "x")], 1360).tolist() == ["sil", "x", "x", "x"]
    with pytest.raises(ValueError, match="must not overlap"):
        frame_phone_labels([Phone(0, 600, "a"), Phone(500, 900, "b")], 1360)


def test_labels_equal_a_frame_by_frame_reference_on_random_intervals():
    rng = np.random.default_rng(0)
    for _ in range(50):
        num_samples = int(rng.integers(0, 20000))
        cuts = np.sort(rng.choice(num_samples + 1, size=min(12, num_samples + 1), replace=False))
        # Every other interval is a phone; the gaps between them are uncovered audio.
        pairs = zip(cuts[::2], cuts[1::2], strict=False)  # an odd last cut has no end
        phones = [Phone(int(a), int(b), f"p{k}") for k, (a, b) in enumerate(pairs)]
        expected = []
        for i in range(conv_stack_frames(num_samples)):
            centre = 320 * i + 200
            covering = [p.name for p in phones if p.start <= centre < p.end]
            expected.append(covering[0] if covering else PHONE_SILENCE)
        assert frame_phone_labels(phones, num_samples).tolist() == expected


def test_phones_cover_the_audio_in_order_and_match_g2p():
    text = "The quick brown fox jumps over the lazy dog. Seven green birds."
    wav, phones = synthesize_with_phones(text)
    assert phones[0].start == 0 and phones[-1].end == len(wav)
    assert all(a.end == b.start for a, b in zip(phones, phones[1:], strict=False))
    assert all(p.start < p.end and p.name for p in phones)
    assert not any(
        a.name == b.name == PHONE_SILENCE for a, b in zip(phones, phones[1:], strict=False)
    )
    spoken = [p.name for p in phones if p.name != PHONE_SILENCE]
    assert spoken == [p for word in phonemize(text) for p in word]  # events = eSpeak's own g2p
    assert not any(mark in "".join(spoken) for mark in "ˈˌ")  # stress is not a phone


def test_no_phone_is_lost_after_many_voice_selections_without_speech():
    # eSpeak queues a command per voice selection that only synthesis consumes; with 25 or more
    # queued, its next synthesis dropped the first phoneme event (the first phone read "sil").
    text = "The quick brown fox."
    _, reference = synthesize_with_phones(text)
    for _ in range(40):
        phonemize("hello there", voice="en-us")
    _, phones = synthesize_with_phones(text)
    assert [p.name for p in phones] == [p.name for p in reference]
    assert phones[1].name == "ð"


def test_phone_times_do_not_depend_on_the_output_rate():
    text = "Seven green birds fly over the river."
    wav16, phones16 = synthesize_with_phones(text, sample_rate=SR)
    wav22, phones22 = synthesize_with_phones(text, sample_rate=22050)
    assert [p.name for p in phones16] == [p.name for p in phones22]
    # Repeated calls can move a boundary by a few native samples (synth module docstring).
    starts16 = np.array([p.start for p in phones16]) / SR
    starts22 = np.array([p.start for p in phones22]) / 22050
    assert np.abs(starts16 - starts22).max() < 0.002


def window_rms(wav: np.ndarray) -> np.ndarray:
    """RMS of each frame's 400-sample window. Shape: (T,)."""
    return np.array(
        [np.sqrt(np.mean(wav[c - 200 : c + 200] ** 2)) for c in frame_centres(len(wav))]
    )


def test_silent_audio_is_labelled_silence():
    wav, phones = synthesize_with_phones("One. Two. Three. Four. Five.")
    labels = frame_phone_labels(phones, len(wav))
    rms = window_rms(wav.astype(np.float64))
    silent = rms < 0.003 * rms.max()
    assert silent.sum() > 30  # the pauses between the words
    assert np.all(labels[silent] == PHONE_SILENCE)
    # Conversely, what is labelled speech is audible.
    assert np.all(rms[labels != PHONE_SILENCE] > 0.01 * rms.max())


def test_corpus_keeps_transcripts_and_phone_labels_beside_the_audio(tmp_path):
    voices = ("en", "en+f3", "en-us")
    paths = make_speech_corpus(tmp_path, minutes=0.4, seed=5, voices=voices)
    texts: dict[int, set[str]] = {}
    voices_of: dict[int, set[str]] = {}
    for path in paths:
        info = json.loads(path.with_suffix(".json").read_text("utf-8"))
        assert sf.info(str(path)).frames == info["num_samples"]
        assert path.with_suffix(".txt").read_text("utf-8") == info["text"] + "\n"
        assert info["voice"] in voices and info["sample_rate"] == SR
        phones = [Phone(*p) for p in info["phones"]]
        assert phones[0].start == 0 and phones[-1].end == info["num_samples"] <= 8 * SR
        assert all(a.end == b.start for a, b in zip(phones, phones[1:], strict=False))
        spoken = [p.name for p in phones if p.name != PHONE_SILENCE]
        g2p = [p for word in phonemize(info["text"], voice=info["voice"]) for p in word]
        # Synthesis elides the odd phone that g2p lists (the l of "always"): nearly equal.
        assert difflib.SequenceMatcher(a=spoken, b=g2p, autojunk=False).ratio() > 0.97
        texts.setdefault(info["sentence"], set()).add(info["text"])
        voices_of.setdefault(info["sentence"], set()).add(info["voice"])
    assert all(len(t) == 1 for t in texts.values())  # one id, one text
    assert len({next(iter(t)) for t in texts.values()}) == len(texts)  # and one text, one id
    assert sorted(texts) == list(range(len(texts)))
    assert any(len(v) > 1 for v in voices_of.values())  # a sentence spoken by several voices


def test_frame_label_file_round_trip(tmp_path):
    phones = {"a/x.flac": np.array(["sil", "h", "ə"]), "b/y.flac": np.array([], dtype=str)}
    phones["c/z.flac"] = np.array(["ə", "sil"])
    write_frame_labels(tmp_path / "p.npz", phones)
    back = read_frame_labels(tmp_path / "p.npz")
    assert list(back) == list(phones)
    assert all(back[k].tolist() == phones[k].tolist() for k in phones)
    with np.load(tmp_path / "p.npz", allow_pickle=False) as raw:  # no pickles inside
        assert raw["labels"].dtype == np.int16 and raw["offsets"].tolist() == [0, 3, 3, 5]
    tokens = {"a": np.array([0, 128, 5]), "b": np.array([7])}
    write_frame_labels(tmp_path / "t.npz", tokens)
    back_tokens = read_frame_labels(tmp_path / "t.npz")
    assert back_tokens["a"].dtype == np.int64 and back_tokens["a"].tolist() == [0, 128, 5]
    assert back_tokens["b"].tolist() == [7]


def test_frame_label_file_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", paths=np.array(["a"]), labels=np.zeros(3))
    with pytest.raises(ValueError, match=re.escape("missing ['offsets']")):
        read_frame_labels(tmp_path / "bad.npz")
    np.savez(
        tmp_path / "short.npz",
        paths=np.array(["a", "b"]),
        offsets=np.array([0, 2]),
        labels=np.zeros(2),
    )
    with pytest.raises(ValueError, match="2 paths need 3 offsets ending at 2, got 2 ending at 2"):
        read_frame_labels(tmp_path / "short.npz")
    with pytest.raises(ValueError, match="strings or integers"):
        write_frame_labels(tmp_path / "f.npz", {"a": np.array([0.5])})


def test_utterance_label_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "u.tsv"
    write_utterance_labels(
        path, ["voice", "sentence"], {"a.flac": ["en", 3], "b.flac": ["en+f3", 0]}
    )
    assert path.read_text().splitlines()[0] == "path\tvoice\tsentence"
    assert read_utterance_labels(path) == {
        "a.flac": {"voice": "en", "sentence": "3"},
        "b.flac": {"voice": "en+f3", "sentence": "0"},
    }
    path.write_text("path\tvoice\na.flac\ten\na.flac\ten\n")
    with pytest.raises(ValueError, match=re.escape("u.tsv:3: a.flac appears twice")):
        read_utterance_labels(path)
    path.write_text("path\tvoice\na.flac\ten\textra\n")
    with pytest.raises(ValueError, match=re.escape("u.tsv:2: 3 fields, the header has 2")):
        read_utterance_labels(path)
    path.write_text("a.flac\ten\n")
    with pytest.raises(ValueError, match=re.escape("u.tsv:1: expected a header")):
        read_utterance_labels(path)
    with pytest.raises(ValueError, match="tab or a newline"):
        write_utterance_labels(path, ["text"], {"a.flac": ["one\ttwo"]})
