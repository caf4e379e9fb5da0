"""The demo's labels and probe steps on a little synthesised speech (seen and unseen voices)."""

from __future__ import annotations

import json

import pytest
from helpers import save_random_tiny

from w2vkit import cli
from w2vkit.data.labels import PHONE_SILENCE, read_frame_labels
from w2vkit.data.synth import make_speech_corpus
from w2vkit.recipes import demo


def test_frame_labels_are_written_and_the_phone_probe_tests_on_unseen_voices(tmp_path, capsys):
    pytest.importorskip("espeakng_loader")
    corpus = tmp_path / "corpus"
    make_speech_corpus(corpus / "seen", minutes=0.15, seed=1, voices=("en", "en-us", "en+f3"))
    make_speech_corpus(corpus / "unseen", minutes=0.3, seed=2, voices=demo.UNSEEN_VOICES)
    all_manifest = tmp_path / "m" / "train.tsv"
    argv = ["manifest", str(corpus), "--dest", str(all_manifest.parent), "--valid-percent", "0"]
    assert cli.main([*argv, "--workers", "1"]) == 0
    frame_labels, utterances = demo._write_labels(corpus, all_manifest, tmp_path / "labels")
    files = sorted(p.relative_to(corpus).as_posix() for p in corpus.rglob("*.flac"))
    rows = utterances.read_text().splitlines()
    assert rows[0] == "path\tvoice\tsentence\tpretraining" and len(rows) == 1 + len(files)
    unseen = [r.split("\t") for r in rows[1:] if r.endswith("\tunseen")]
    assert unseen and {r[1] for r in unseen} <= {"en_f4", "en-gb-scotland"}
    labels = read_frame_labels(frame_labels)
    assert sorted(labels) == files
    assert all(len(set(v)) > 3 for v in labels.values())
    assert any(PHONE_SILENCE in v for v in labels.values())

    save_random_tiny(tmp_path / "m.pt")
    extract = ["extract", str(tmp_path / "m.pt"), str(tmp_path / "m" / "train.tsv"), "--quiet"]
    assert cli.main([*extract, "--out", str(tmp_path / "f")]) == 0
    probes = demo._probes(tmp_path / "f", frame_labels, utterances, seed=0, verbose=False)
    assert list(probes) == ["phone", "voice"]
    phone = json.loads(probes["phone"].read_text())
    assert phone["split"]["held_out"] == {"voice": ["en-gb-scotland", "en_f4"]}
    assert phone["split"]["num_test_utterances"] == len(unseen)
    assert phone["split"]["num_train_utterances"] == len(files) - len(unseen)
    assert {s["features"] for s in phone["scores"]} == {"pretrained", "random", "logmel"}
    capsys.readouterr()
    asr = {"pretrained": {"cer": 12.5, "wer": 40.25, "cer_lm": 9.75, "wer_lm": 30.5}}
    demo._probe_table(probes, asr)
    table = capsys.readouterr().out
    assert "phones, unseen voices" in table and "logmel ±4" in table and "chance" in table
    pretrained = next(line for line in table.splitlines() if line.strip().startswith("pretrained"))
    assert pretrained.split()[-4:] == ["12.5", "40.2", "9.8", "30.5"]  # CER, WER, +LM (%.1f)
    random_row = next(line for line in table.splitlines() if line.strip().startswith("random"))
    assert random_row.split()[-4:] == ["-", "-", "-", "-"]  # no recogniser fine-tuned from it


@pytest.mark.parametrize("verbose", [False, True])
def test_a_failed_demo_step_shows_its_traceback_only_under_verbose(tmp_path, capsys, verbose):
    # `w2vkit demo --verbose` runs each step with --verbose: the step's own error line either way.
    argv = [str(tmp_path / "none"), f"--labels={tmp_path / 'labels.tsv'}"]
    assert demo._run_recipe("probe", argv, verbose) == 2
    err = capsys.readouterr().err
    assert f"w2vkit probe: {tmp_path / 'none'}" in err
    assert ("Traceback (most recent call last)" in err) == verbose
