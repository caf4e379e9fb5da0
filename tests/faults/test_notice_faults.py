"""Issue 28 item 18: smaller faults. The probe names the class it warns about, data notices come
once per split, a manifest without sample rates says what that means, a phoneme run is pointed at
`--phonemes`, docs/training.md lists each config section once."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from w2vkit.config import ConfigError
from w2vkit.data.dataset import AudioDataset
from w2vkit.data.manifest import Manifest, write_manifest
from w2vkit.finetune.config import LabelledDataConfig
from w2vkit.probe.linear import Split, split_warnings
from w2vkit.recipes import finetune

REPO = Path(__file__).resolve().parents[2]


def test_the_probe_warning_names_the_class_not_its_index():
    classes = [f"phone{i}" for i in range(12)]
    split = Split(train=np.arange(3), test=np.arange(3), by=[])
    notes = split_warnings(
        "frame", split, np.array([0, 1, 2] * 200), np.array([0, 10] * 300), classes
    )
    assert notes == [
        "1 test classes never occur in training (e.g. 'phone10'): they cannot be predicted"
    ]


def _manifest(tmp_path, rate: int, sidecar: bool) -> Path:
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(2):
        sf.write(audio / f"{i}.wav", np.zeros(rate), rate)
    rates = np.full(2, rate) if sidecar else None
    manifest = Manifest(audio, ["0.wav", "1.wav"], np.full(2, rate), sample_rates=rates)
    write_manifest(tmp_path / "train.tsv", manifest)
    if not sidecar:
        (tmp_path / "train.meta.tsv").unlink(missing_ok=True)
    return tmp_path / "train.tsv"


def test_the_resampling_notice_comes_once_per_split(tmp_path, caplog):
    path = _manifest(tmp_path, 8000, sidecar=True)
    with caplog.at_level(logging.INFO, logger="w2vkit.data.dataset"):
        AudioDataset(path)  # the pre-flight check
        AudioDataset(path)  # the loader
    assert caplog.text.count("are not at 16000 Hz") == 1


def test_a_manifest_without_sample_rates_says_what_it_assumes(tmp_path, caplog):
    path = _manifest(tmp_path, 8000, sidecar=False)
    with caplog.at_level(logging.WARNING, logger="w2vkit.data.dataset"):
        dataset = AudioDataset(path)
    assert dataset.num_samples.tolist() == [8000, 8000]  # frames taken as 16 kHz samples
    assert (
        f"{tmp_path / 'audio'}: 2 of 2 rows have no sample rate (no .meta.tsv sidecar): their "
        "frame counts are taken as 16000 Hz samples, as fairseq does; a file at another rate has "
        "another length than planned (cropped if shorter). `w2vkit manifest AUDIO_DIR` writes "
        "the sidecar"
    ) in caplog.text


def test_a_phoneme_run_without_its_dictionary_points_at_phonemes(tmp_path):
    data = LabelledDataConfig(manifest_dir=str(tmp_path), labels="phn")
    with pytest.raises(ConfigError) as err:
        finetune._vocabulary(data)
    assert f"`w2vkit labels {tmp_path / 'train.tsv'} --phonemes`" in str(err.value)


def test_training_docs_list_each_config_section_once():
    rows = [
        line.split("|")[1].strip()
        for line in (REPO / "docs" / "training.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| `")
    ]
    sections = [r for r in rows if r in ("`model`", "`data`", "`optim`", "`loss`", "`train`")]
    assert sorted(sections) == sorted(set(sections)) and "`train`" in sections
