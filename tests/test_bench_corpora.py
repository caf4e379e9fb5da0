"""bench/corpora.py: issue 27's corpora differ as specified, build seeded and cached, and the real
recordings are mixed in or skipped with the command that gets them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import corpora  # noqa: E402
import small_budget  # noqa: E402


def test_corpora_differ_in_text_voices_rate_and_length_and_avoid_the_probe_voices():
    specs = list(corpora.CORPORA.values())
    assert len(specs) >= 3
    assert {s.seconds for s in specs} == {(2, 4), (2, 12), (10, 20)}
    assert len({s.rate_wpm for s in specs}) == len(specs)
    variants = [set(s.variants) for s in specs]
    probes = set(small_budget.PROBE_TRAIN_VARIANTS) | set(small_budget.PROBE_TEST_VARIANTS)
    assert all(not (a & b) for i, a in enumerate(variants) for b in variants[i + 1 :])
    assert not set().union(*variants) & probes
    assert {s.text for s in specs} == {"words", "prose"}
    noisy = corpora.CORPORA["prose_long_noisy"]
    assert noisy.noise_snr_db is not None and set(noisy.sample_rates) == {8000, 16000, 48000}
    prose = corpora.prose_sentences()
    assert len(prose) > 200 and all(4 <= len(s.split()) <= 30 for s in prose)


def test_noise_is_at_the_asked_snr():
    rng = np.random.default_rng(0)
    speech = np.sin(np.arange(16000) / 5).astype(np.float32) * 0.3
    noisy = corpora._noise(rng, speech, 10.0)
    noise = noisy.astype(np.float64) - speech
    snr = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(noise**2))
    assert abs(snr - 10.0) < 0.01


def test_a_corpus_builds_seeded_and_cached_within_its_file_lengths(tmp_path):
    first = corpora.build("words_short", tmp_path / "a", minutes=0.2)
    again = corpora.build("words_short", tmp_path / "b", minutes=0.2)
    files = sorted(first.rglob("*.flac"))
    assert files and [p.relative_to(first) for p in files] == [
        p.relative_to(again) for p in sorted(again.rglob("*.flac"))
    ]
    for path in files:
        assert path.read_bytes() == (again / path.relative_to(first)).read_bytes()
        assert sf.info(path).duration <= 4.0  # never cut: the text is shortened instead
    # Cached: a second build of the same name does not synthesise again.
    files[0].unlink()
    assert corpora.build("words_short", tmp_path / "a", minutes=0.2) == first
    assert not files[0].exists()


def test_real_recordings_are_mixed_in_or_skipped_with_the_way_to_get_them(tmp_path):
    said = corpora.add_real(tmp_path / "real", None)
    assert "apt-get download alsa-utils codec2-examples" in said and "dpkg -x" in said
    debs = tmp_path / "debs"
    (debs / "usr/share/sounds/alsa").mkdir(parents=True)
    (debs / "usr/share/codec2/wav").mkdir(parents=True)
    sf.write(debs / "usr/share/sounds/alsa/Front_Left.wav", np.zeros((800, 2)), 48000)
    sf.write(debs / "usr/share/codec2/wav/hts1a.wav", np.zeros(800), 8000)
    assert corpora.add_real(tmp_path / "real", debs) == f"mixed in 2 real recordings from {debs}"
    info = sf.info(tmp_path / "real" / "Front_Left.flac")
    assert (info.channels, info.samplerate) == (1, 48000)
    assert sf.info(tmp_path / "real" / "hts1a.flac").samplerate == 8000
