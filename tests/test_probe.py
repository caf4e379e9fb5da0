"""`w2vkit probe`: linear probes find a linearly coded label, not noise; held-out splits; baselines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import VOICES, save_random_tiny, write_features

from w2vkit import cli
from w2vkit.data.labels import read_frame_labels, read_utterance_labels
from w2vkit.data.manifest import Manifest, write_manifest
from w2vkit.features.store import load_features
from w2vkit.probe.baselines import random_model_source
from w2vkit.probe.data import select_frames, stack_context
from w2vkit.probe.linear import chance_scores, fit_and_score, split_items

SENTENCES = [f"s{i}" for i in range(6)]


def _frame_corpus(tmp_path: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """8 voices x 6 sentences, 5 frame classes; layer 0 noise, layer 4 class mean plus noise."""
    rng = np.random.default_rng(seed)
    means = 2.0 * rng.normal(size=(5, 12))
    items, frame_lines, table = {}, [], ["path\tvoice\tsentence"]
    for voice in VOICES:
        for sentence in SENTENCES:
            path = f"{voice}/{sentence}.flac"
            labels = rng.integers(0, 5, size=int(rng.integers(20, 40)))
            coded = means[labels] + rng.normal(size=(len(labels), 12))
            items[path] = np.stack([rng.normal(size=coded.shape), coded])  # (2, T, 12)
            frame_lines.append(path + "\t" + " ".join("aeiou"[k] for k in labels))
            table.append(f"{path}\t{voice}\t{sentence}")
    write_features(tmp_path / "feats", items)
    (tmp_path / "frames.tsv").write_text("\n".join(frame_lines) + "\n")
    (tmp_path / "utterances.tsv").write_text("\n".join(table) + "\n")
    return tmp_path / "feats", tmp_path / "frames.tsv", tmp_path / "utterances.tsv"


def _run(*argv: str) -> int:
    return cli.main(["probe", *argv])


def test_frame_probe_decodes_the_coded_layer_and_not_the_noise(tmp_path, capsys):
    feats, frames, utterances = _frame_corpus(tmp_path)
    argv = [str(feats), "--task", "frame", "--labels", str(frames), "--utterances", str(utterances)]
    assert _run(*argv, "--split-by", "voice") == 0
    report = json.loads((feats / "probe_frames" / "probe.json").read_text())
    noise, coded = report["scores"]
    assert (noise["layer"], coded["layer"]) == (0, 4) and report["best"]["layer"] == 4
    assert coded["accuracy"] > 0.97 and coded["macro_f1"] > 0.97
    # 5 equally likely classes: noise scores 1/5 give or take sqrt(0.16 / n); allow 4 deviations.
    assert noise["accuracy"] < 0.2 + 4 * (0.16 / report["split"]["num_test"]) ** 0.5
    assert report["split"]["held_out"] == {"voice": report["split"]["held_out"]["voice"]}
    assert len(report["split"]["held_out"]["voice"]) == 2  # 25% of 8 voices
    assert sum(report["test_counts"].values()) == report["split"]["num_test"]
    assert set(report["train_counts"]) == set("aeiou")
    assert (feats / "probe_frames" / "probe.png").read_bytes()[:4] == b"\x89PNG"
    assert "<- best" in capsys.readouterr().out


def test_held_out_split_never_leaks_a_voice_or_a_sentence():
    rng = np.random.default_rng(0)
    voices = rng.choice(VOICES, size=300)
    sentences = rng.choice(SENTENCES, size=300)
    for seed in range(5):
        split = split_items(np.zeros(300), {"voice": voices}, seed=seed)
        assert not set(voices[split.train]) & set(voices[split.test])
        assert sorted(voices[split.test].tolist()) == sorted(
            v for v in voices.tolist() if v in split.held_out["voice"]
        )
        assert len(split.train) + len(split.test) == 300 and split.num_dropped == 0
        both = split_items(np.zeros(300), {"voice": voices, "sentence": sentences}, seed=seed)
        for values in (voices, sentences):
            assert not set(values[both.train]) & set(values[both.test])
        assert both.num_dropped == 300 - len(both.train) - len(both.test) > 0
    assert (
        split_items(np.zeros(300), {"voice": voices}, seed=1).held_out
        != split_items(np.zeros(300), {"voice": voices}, seed=2).held_out
    )
    fixed = split_items(np.zeros(300), {"voice": voices}, test_values={"voice": ["v3", "v1"]})
    assert fixed.held_out == {"voice": ["v1", "v3"]}
    assert set(voices[fixed.test]) == {"v1", "v3"} and not {"v1", "v3"} & set(voices[fixed.train])
    with pytest.raises(ValueError, match="no item has voice 'v9'"):
        split_items(np.zeros(300), {"voice": voices}, test_values={"voice": ["v9"]})
    with pytest.raises(ValueError, match="test values given for"):
        split_items(np.zeros(300), {"voice": voices}, test_values={"sentence": ["s1"]})
    with pytest.raises(ValueError, match="cannot hold out 'voice': all items share one value"):
        split_items(np.zeros(4), {"voice": np.array(["a"] * 4)})


def test_the_frame_probe_holds_out_voices_end_to_end(tmp_path):
    """Voice-specific class means: a probe that saw a test voice would score higher than one that did
    not; with the voice held out, test frames come only from voices absent from training."""
    feats, frames, utterances = _frame_corpus(tmp_path)
    argv = [str(feats), "--task", "frame", "--labels", str(frames), "--utterances", str(utterances)]
    assert _run(*argv, "--split-by", "voice,sentence", "--seed", "3") == 0
    split = json.loads((feats / "probe_frames" / "probe.json").read_text())["split"]
    held = split["held_out"]
    assert len(held["voice"]) == 2 and len(held["sentence"]) == 2  # round(0.25 * 6) = 2
    assert split["num_test_utterances"] == 4 and split["num_train_utterances"] == 6 * 4
    assert split["num_dropped_utterances"] == 48 - 4 - 24
    assert _run(*argv, "--split-by", "voice", "--test-values", "voice=v7,v0") == 0
    split = json.loads((feats / "probe_frames" / "probe.json").read_text())["split"]
    assert split["held_out"] == {"voice": ["v0", "v7"]} and split["num_test_utterances"] == 12


def test_stratified_split_and_chance():
    targets = np.array([0] * 8 + [1] * 4 + [2])  # class 2 has one item: train only
    split = split_items(targets, test_fraction=0.25, seed=0)
    assert sorted(np.concatenate([split.train, split.test]).tolist()) == list(range(13))
    assert np.bincount(targets[split.test], minlength=3).tolist() == [2, 1, 0]
    assert chance_scores(np.array([0, 0, 1]), np.array([0, 1, 1, 1])) == pytest.approx(
        (0.25, (2 * 0.25 / 1.25 + 0) / 2)  # majority 0: F1 of class 0 = 0.4, of class 1 = 0
    )
    with pytest.raises(ValueError, match="test_fraction"):
        split_items(targets, test_fraction=1.0)


def test_fit_and_score_on_separable_and_on_random_labels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 6))
    separable = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)  # 4 classes, linear
    acc, f1, train_acc, per_class, converged = fit_and_score(
        x[:400], separable[:400], x[400:], separable[400:], list("abcd"), c=100.0
    )
    assert acc > 0.95 and f1 > 0.95 and converged and set(per_class) == set("abcd")
    noise = rng.integers(0, 4, size=600)
    acc, *_ = fit_and_score(x[:400], noise[:400], x[400:], noise[400:], list("abcd"))
    assert abs(acc - 0.25) < 0.1  # 200 test items: sd 0.03


def test_stack_context_repeats_edge_frames():
    x = np.arange(5, dtype=np.float32).reshape(1, 5, 1) * np.array([1, 10], dtype=np.float32)
    stacked = stack_context(x, np.array([0, 2, 4]), 1)  # (1, 3, 3 * 2)
    assert stacked.shape == (1, 3, 6)
    assert stacked[0, 0].tolist() == [0, 0, 0, 0, 1, 10]  # frame -1 is frame 0
    assert stacked[0, 1].tolist() == [1, 10, 2, 20, 3, 30]
    assert stacked[0, 2].tolist() == [3, 30, 4, 40, 4, 40]  # frame 5 is frame 4


def test_frame_subsampling_is_seeded_and_within_items(tmp_path):
    feats, frames, utterances = _frame_corpus(tmp_path)
    from w2vkit.probe.data import load_task

    task = load_task(feats, frames, task="frame", utterances_path=utterances)
    items = np.arange(10)
    draws = [select_frames(task, items, 100, np.random.default_rng(s)) for s in (0, 0, 1)]
    assert sum(len(v) for v in draws[0].values()) == 100
    assert all(np.array_equal(draws[0][k], draws[1][k]) for k in draws[0])
    assert any(not np.array_equal(draws[0].get(k), draws[2].get(k)) for k in range(10))
    for item, chosen in draws[0].items():
        assert 0 <= chosen.min() and chosen.max() < len(task.targets[item])
        assert np.all(np.diff(chosen) > 0)  # sorted, no repeats
    everything = select_frames(task, items, None, np.random.default_rng(0))
    assert [len(v) for v in everything.values()] == [len(task.targets[i]) for i in items]


def test_utterance_probe_with_a_header_a_target_column_and_a_warning(tmp_path, capsys):
    rng = np.random.default_rng(1)
    voice_means = 3.0 * rng.normal(size=(len(VOICES), 8))
    items, table = {}, ["path\tvoice\tsentence"]
    for v, voice in enumerate(VOICES):
        for sentence in SENTENCES:
            path = f"{voice}/{sentence}.flac"
            items[path] = np.stack([rng.normal(size=8), voice_means[v] + rng.normal(size=8)])
            table.append(f"{path}\t{voice}\t{sentence}")
    write_features(tmp_path / "feats", items)
    (tmp_path / "utt.tsv").write_text("\n".join(table) + "\n")
    argv = [str(tmp_path / "feats"), "--labels", str(tmp_path / "utt.tsv"), "--target", "voice"]
    assert _run(*argv, "--split-by", "sentence") == 0
    report = json.loads((tmp_path / "feats" / "probe_voice" / "probe.json").read_text())
    assert report["best"]["layer"] == 4 and report["best"]["accuracy"] > 0.9
    assert report["chance_accuracy"] == pytest.approx(1 / 8)
    assert (
        report["split"]["held_out"]["sentence"] == ["s1", "s5"]
        or len(report["split"]["held_out"]["sentence"]) == 2
    )
    assert report["split"]["num_test"] == 16  # 2 sentences x 8 voices
    err = capsys.readouterr().err
    assert "warning: only 16 test utterances" in err and report["warnings"]


def test_two_column_labels_still_work(tmp_path):
    rng = np.random.default_rng(2)
    means = {"low": rng.normal(size=6) * 3, "high": rng.normal(size=6) * 3}
    items, lines = {}, []
    for i in range(40):
        label = ["low", "high"][i % 2]
        items[f"{i:03d}.wav"] = np.stack([rng.normal(size=6), means[label] + rng.normal(size=6)])
        lines.append(f"{i:03d}.wav\t{label}")
    write_features(tmp_path / "feats", items)
    (tmp_path / "labels.tsv").write_text("\n".join(lines[::-1]) + "\n")
    assert _run(str(tmp_path / "feats"), "--labels", str(tmp_path / "labels.tsv")) == 0
    report = json.loads((tmp_path / "feats" / "probe_labels" / "probe.json").read_text())
    assert report["split"]["by"] == [] and report["split"]["num_test"] == 10
    assert report["test_counts"] == {"high": 5, "low": 5}
    assert report["best"]["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a.wav\tlow\nb.wav low\n", "labels.tsv:2: expected 'relative_path<TAB>label'"),
        ("a.wav\tlow\n\na.wav\tmid\n", "labels.tsv:3: 'a.wav' is labelled twice"),
        ("a.wav\tlow\nzzz.wav\tmid\n", "'zzz.wav' has no features"),
        ("a.wav\tlow\nb.wav\tlow\n", "at least 2 classes"),
        ("", "no labels"),
        ("path\tvoice\na.wav\n", "labels.tsv:2: 1 fields, the header has 2"),
    ],
)
def test_label_file_errors_name_the_line(tmp_path, capsys, content, message):
    write_features(tmp_path / "feats", {p: np.zeros((2, 3)) for p in ("a.wav", "b.wav")})
    (tmp_path / "labels.tsv").write_text(content)
    assert _run(str(tmp_path / "feats"), "--labels", str(tmp_path / "labels.tsv")) == 2
    assert message in capsys.readouterr().err


def test_frame_label_count_must_match_the_features(tmp_path, capsys):
    write_features(tmp_path / "feats", {"a.wav": np.zeros((2, 4, 3))})
    (tmp_path / "f.tsv").write_text("a.wav\tx y x\n")
    argv = [str(tmp_path / "feats"), "--task", "frame", "--labels", str(tmp_path / "f.tsv")]
    assert _run(*argv) == 2
    assert "'a.wav' has 3 frame labels but 4 feature frames" in capsys.readouterr().err


def test_an_utterance_table_given_as_frame_labels_says_so(tmp_path, capsys):
    write_features(tmp_path / "feats", {"a.wav": np.zeros((2, 4, 3))})
    (tmp_path / "utt.tsv").write_text("path\tvoice\na.wav\tv1\n")
    argv = [str(tmp_path / "feats"), "--task", "frame", "--labels", str(tmp_path / "utt.tsv")]
    assert _run(*argv) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'utt.tsv'} starts with a 'path' header, like an utterance table" in err
    assert "pass the table as --utterances, or use --task utterance" in err


def test_label_readers(tmp_path):
    (tmp_path / "f.tsv").write_text("a.flac\tsil h h\nb/c.flac\t3 4\n")
    labels = read_frame_labels(tmp_path / "f.tsv")
    assert labels["a.flac"].tolist() == ["sil", "h", "h"] and labels["b/c.flac"].tolist() == [
        "3",
        "4",
    ]
    (tmp_path / "n.tsv").write_text("a.flac\t0 12 12\n")
    assert read_frame_labels(tmp_path / "n.tsv")["a.flac"].dtype == np.int64
    (tmp_path / "u.tsv").write_text("path\tvoice\tsentence\na.flac\ten\t3\n")
    assert read_utterance_labels(tmp_path / "u.tsv") == {"a.flac": {"voice": "en", "sentence": "3"}}
    (tmp_path / "bad.tsv").write_text("a.flac\ten\n")
    with pytest.raises(ValueError, match="bad.tsv:1: expected a header"):
        read_utterance_labels(tmp_path / "bad.tsv")


def tone_bursts(root: Path, paths: list[str], seed: int = 0) -> list[str]:
    """A 15-frame tone burst in faint noise per file, written under `root`; returns the frame
    label lines (`path<TAB>sil ... tone ... sil`, one label per 20 ms frame)."""
    rng = np.random.default_rng(seed)
    lines = []
    for path in paths:
        num_frames = int(rng.integers(40, 70))
        wav = 0.01 * rng.normal(size=320 * (num_frames - 1) + 400)
        on = np.zeros(num_frames, dtype=bool)
        start = int(rng.integers(5, num_frames // 2))
        on[start : start + 15] = True
        for i in np.flatnonzero(on):
            t = np.arange(320 * i, 320 * i + 400)
            wav[t] += 0.4 * np.sin(2 * np.pi * rng.uniform(300, 900) * t / 16000)
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / path, wav.astype(np.float32), 16000)
        lines.append(path + "\t" + " ".join("tone" if x else "sil" for x in on))
    return lines


def test_baselines_on_real_audio_through_the_cli(tmp_path):
    """Tone bursts in silence, labelled per frame; a tiny random checkpoint is 'pretrained'.
    Log-mel must find tone vs silence; every requested source is probed on the same frames."""
    paths = [f"{voice}/{k}.wav" for voice in "abcd" for k in range(3)]
    frame_lines = tone_bursts(tmp_path, paths)
    table = ["path\tvoice\tsentence"] + [f"{p}\t{p[0]}\t{p[2]}" for p in paths]
    sizes = [sf.info(tmp_path / p).frames for p in paths]
    write_manifest(tmp_path / "m.tsv", Manifest(tmp_path, paths, sizes))
    (tmp_path / "frames.tsv").write_text("\n".join(frame_lines) + "\n")
    (tmp_path / "utt.tsv").write_text("\n".join(table) + "\n")
    model = save_random_tiny(tmp_path / "m.pt")
    extract = ["extract", str(tmp_path / "m.pt"), str(tmp_path / "m.tsv"), "--quiet"]
    assert cli.main([*extract, "--out", str(tmp_path / "f")]) == 0
    probe = [
        "probe",
        str(tmp_path / "f"),
        "--task",
        "frame",
        "--labels",
        str(tmp_path / "frames.tsv"),
    ]
    probe += ["--utterances", str(tmp_path / "utt.tsv"), "--split-by", "voice"]
    assert cli.main([*probe, "--baseline", "logmel", "--baseline", "random"]) == 0
    report = json.loads((tmp_path / "f" / "probe_frames" / "probe.json").read_text())
    names = [(s["features"], s["layer"], s["context"]) for s in report["scores"]]
    assert names == [("pretrained", k, 0) for k in range(3)] + [
        ("random", k, 0) for k in range(3)
    ] + [
        ("logmel", None, 0),
        ("logmel", None, 4),
    ]
    logmel = report["scores"][-2]
    assert logmel["accuracy"] > 0.9 and logmel["accuracy"] > report["chance_accuracy"] + 0.2
    # The random baseline: the same architecture, seeded, not the checkpoint's weights.
    paths = ["a/0.wav"]
    first, again, other = (
        next(
            random_model_source(
                tmp_path / "m.tsv", paths, model.cfg, [0, 2], normalize=False, seed=s
            )
        )
        for s in (0, 0, 1)
    )
    stored = load_features(tmp_path / "f", layer=2)["a/0.wav"].numpy()
    assert first[2].shape == (2, *stored.shape) and np.array_equal(first[2], again[2])
    assert not np.allclose(first[2][1], other[2][1]) and not np.allclose(first[2][1], stored)
