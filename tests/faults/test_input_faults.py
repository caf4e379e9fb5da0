"""Issue 28 items 6 (absurd sample rates) and 10 (a named pipe in the audio folder): `manifest`
lists them as skipped instead of resampling hours of nothing or waiting forever for a writer."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from w2vkit.data.audio import load_audio, probe_audio


def test_a_one_hertz_header_is_refused_before_resampling(tmp_path):
    path = tmp_path / "one_hz.wav"
    sf.write(path, np.zeros(20000, dtype=np.int16), 1, subtype="PCM_16")  # 40 KB, 5.5 h at 16 kHz
    for read in (probe_audio, load_audio):
        with pytest.raises(ValueError, match="^its header declares 1 Hz, outside 4000-768000 Hz$"):
            read(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_manifest_skips_a_named_pipe_and_an_absurd_rate(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(2):
        sf.write(audio / f"{i}.wav", np.random.default_rng(i).normal(0, 0.1, 16000), 16000)
    sf.write(audio / "one_hz.wav", np.zeros(20000, dtype=np.int16), 1, subtype="PCM_16")
    os.mkfifo(audio / "x.wav")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # the w2vkit under test
    result = subprocess.run(
        [sys.executable, "-m", "w2vkit", "manifest", str(audio), "--dest", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "skipped.tsv").read_text().splitlines() == [
        "path\treason",
        "one_hz.wav\tnot readable audio: its header declares 1 Hz, outside 4000-768000 Hz",
        "x.wav\tnot a regular file (a named pipe, socket or device)",
    ]
