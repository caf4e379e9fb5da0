"""`w2vkit labels`: phone, pitch and letter labels for a synthesised corpus's manifests."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from w2vkit.cli import main
from w2vkit.data.labels import (
    frame_count,
    frame_phone_labels,
    read_frame_labels,
    read_utterance_labels,
)
from w2vkit.data.manifest import read_manifest
from w2vkit.data.phonemes import phoneme_tokens
from w2vkit.data.synth import Phone, make_speech_corpus
from w2vkit.data.text import letters, normalize_transcript, read_letter_dict

pytest.importorskip("espeakng_loader")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    make_speech_corpus(root / "audio", minutes=0.3, seed=2, voices=("en", "en+f3"))
    assert (
        main(["manifest", str(root / "audio"), "--dest", str(root / "m"), "--valid-percent", "0.6"])
        == 0
    )
    return root


def manifests(corpus):
    return [str(corpus / "m" / "train.tsv"), str(corpus / "m" / "valid.tsv")]


def test_phone_and_pitch_labels_fill_the_model_grid(corpus, tmp_path):
    pytest.importorskip("parselmouth")
    assert main(["labels", *manifests(corpus), "--phones", "--pitch", "--dest", str(tmp_path)]) == 0
    for split in ("train", "valid"):
        manifest = read_manifest(corpus / "m" / f"{split}.tsv")
        phones = read_frame_labels(tmp_path / f"{split}.phones.npz")
        pitch = read_frame_labels(tmp_path / f"{split}.pitch.npz")
        utterances = read_utterance_labels(tmp_path / f"{split}.utterances.tsv")
        assert list(phones) == list(pitch) == list(utterances) == manifest.paths
        for rel, num_samples in zip(manifest.paths, manifest.num_frames.tolist(), strict=True):
            info = json.loads((manifest.root / rel).with_suffix(".json").read_text("utf-8"))
            expected = frame_phone_labels([Phone(*p) for p in info["phones"]], num_samples)
            assert phones[rel].tolist() == expected.tolist()
            assert len(phones[rel]) == len(pitch[rel]) == frame_count(num_samples)
            assert utterances[rel] == {
                "voice": info["voice"],
                "sentence": str(info["sentence"]),
                "rate_wpm": str(info["rate_wpm"]),
                "pitch": str(info["pitch"]),
                "num_frames": str(frame_count(num_samples)),
                "text": info["text"],
            }
            voiced = pitch[rel] < 128
            assert 0.3 < voiced.mean() < 0.95 and pitch[rel].min() >= 0
            # Voiced frames are speech: nearly none falls in a labelled pause.
            assert np.mean(phones[rel][voiced] == "sil") < 0.1


def test_letters_from_txt_beside_the_audio_and_from_a_tsv_agree(corpus, tmp_path):
    beside, table = tmp_path / "beside", tmp_path / "table"
    assert main(["labels", *manifests(corpus), "--letters", "--dest", str(beside)]) == 0
    rows = ["path\ttranscript"]
    for split in ("train", "valid"):
        manifest = read_manifest(corpus / "m" / f"{split}.tsv")
        texts = [
            (manifest.root / p).with_suffix(".txt").read_text("utf-8").strip()
            for p in manifest.paths
        ]
        words = [normalize_transcript(t) for t in texts]
        assert (beside / f"{split}.wrd").read_text().splitlines() == words
        assert (beside / f"{split}.ltr").read_text().splitlines() == [letters(w) for w in words]
        rows += [f"{p}\t{t}" for p, t in zip(manifest.paths, texts, strict=True)]
    (tmp_path / "t.tsv").write_text(
        "\n".join(reversed(rows[1:])) + "\n", encoding="utf-8"
    )  # any order
    assert (
        main(
            [
                "labels",
                *manifests(corpus),
                "--transcripts",
                str(tmp_path / "t.tsv"),
                "--dest",
                str(table),
            ]
        )
        == 0
    )
    for name in ("train.wrd", "train.ltr", "valid.wrd", "valid.ltr", "dict.ltr.txt"):
        assert (beside / name).read_bytes() == (table / name).read_bytes()
    counts = read_letter_dict(beside / "dict.ltr.txt")
    ltr = (beside / "train.ltr").read_text() + (beside / "valid.ltr").read_text()
    assert counts == {s: ltr.split().count(s) for s in counts} and "|" in counts
    assert list(counts.values()) == sorted(counts.values(), reverse=True)


def test_mismatched_transcripts_name_both_sides(corpus, tmp_path, capsys):
    manifest = read_manifest(corpus / "m" / "train.tsv")
    first, second = manifest.paths[:2]
    table = tmp_path / "t.tsv"
    table.write_text("".join(f"{p}\tsome words\n" for p in manifest.paths[1:]))
    assert (
        main(["labels", manifests(corpus)[0], "--transcripts", str(table), "--dest", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err
    assert f"train.tsv:2: {first} has no transcript in {table}" in err
    table.write_text(f"{first}\tone\n{second}\ttwo\nnowhere/gone.flac\tthree\n")
    assert (
        main(["labels", manifests(corpus)[0], "--transcripts", str(table), "--dest", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err
    assert (
        f"t.tsv:3: nowhere/gone.flac has no audio: it is in no manifest ({manifests(corpus)[0]})"
        in err
    )


def test_missing_labels_and_modes_are_usage_errors(corpus, tmp_path, capsys):
    assert main(["labels", manifests(corpus)[0]]) == 2
    assert (
        "choose what to write: --phones, --pitch, --letters or --transcripts"
        in capsys.readouterr().err
    )
    copy = tmp_path / "audio"
    shutil.copytree(corpus / "audio", copy)
    assert main(["manifest", str(copy), "--dest", str(tmp_path / "m"), "--valid-percent", "0"]) == 0
    first = read_manifest(tmp_path / "m" / "train.tsv").paths[0]
    (copy / first).with_suffix(".json").unlink()
    (copy / first).with_suffix(".txt").unlink()
    capsys.readouterr()
    assert main(["labels", str(tmp_path / "m" / "train.tsv"), "--phones"]) == 2
    assert f"train.tsv:2: {first} has no phone labels" in capsys.readouterr().err
    assert main(["labels", str(tmp_path / "m" / "train.tsv"), "--letters"]) == 2
    expected = f"train.tsv:2: {first} has no transcript: {(copy / first).with_suffix('.txt')} does not exist"
    assert expected in capsys.readouterr().err


def test_undecodable_audio_is_named(corpus, tmp_path, capsys):
    pytest.importorskip("parselmouth")
    (tmp_path / "broken.flac").write_bytes(b"not audio at all")
    (tmp_path / "m.tsv").write_text(f"{tmp_path}\nbroken.flac\t16000\n")
    assert main(["labels", str(tmp_path / "m.tsv"), "--pitch"]) == 2
    assert "m.tsv:2: broken.flac: cannot decode:" in capsys.readouterr().err


def test_phoneme_targets_follow_the_letters(corpus, tmp_path):
    out = tmp_path / "phn"
    assert main(["labels", manifests(corpus)[0], "--phonemes", "--dest", str(out)]) == 0
    words = (out / "train.wrd").read_text("utf-8").splitlines()
    phn = (out / "train.phn").read_text("utf-8").splitlines()
    assert len(phn) == len(words) and (out / "train.ltr").is_file()
    for line, text in zip(phn, words, strict=True):
        assert line.split() == phoneme_tokens(text.lower())
        assert line.count("|") == len(text.split()) and line.endswith(" |")
    counts = read_letter_dict(out / "dict.phn.txt")
    assert counts["|"] == sum(len(w.split()) for w in words) and "ə" in counts
