"""The demo's labels and probe steps, on tone bursts standing in for synthesised speech (no eSpeak)."""

from __future__ import annotations

import json

from test_probe import save_random_tiny, tone_bursts

from w2vkit import cli
from w2vkit.recipes import demo


def test_frame_labels_are_merged_and_the_phone_probe_tests_on_unseen_voices(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    seen = [f"{v}/000/{v}-{k:05d}.flac" for v in ("en", "en-us", "en_f3") for k in range(3)]
    unseen = [f"{v}/000/{v}-{k:05d}.flac" for v in ("en_f4", "en-gb-scotland") for k in range(3)]
    for part, paths in (("seen", seen), ("unseen", unseen)):
        lines = tone_bursts(corpus / part, paths, seed=len(paths) + len(part))
        (corpus / part / "frame_labels.tsv").write_text("\n".join(lines) + "\n")
    frame_labels, utterances = demo._write_labels(corpus, tmp_path / "labels")
    rows = utterances.read_text().splitlines()
    assert rows[0] == "path\tvoice\tsentence\tpretraining" and len(rows) == 1 + 15
    assert "unseen/en_f4/000/en_f4-00000.flac\ten_f4\ten_f4-00000\tunseen" in rows
    merged = frame_labels.read_text().splitlines()
    assert len(merged) == 15 and merged[0].startswith("seen/en/000/en-00000.flac\tsil")

    save_random_tiny(tmp_path / "m.pt")
    assert (
        cli.main(
            [
                "manifest",
                str(corpus),
                "--dest",
                str(tmp_path / "m"),
                "--valid-percent",
                "0",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    extract = ["extract", str(tmp_path / "m.pt"), str(tmp_path / "m" / "train.tsv"), "--quiet"]
    assert cli.main([*extract, "--out", str(tmp_path / "f")]) == 0
    probes = demo._probes(tmp_path / "f", frame_labels, utterances, seed=0)
    assert list(probes) == ["phone", "voice"]
    phone = json.loads(probes["phone"].read_text())
    assert phone["split"]["held_out"] == {"voice": ["en-gb-scotland", "en_f4"]}
    assert (
        phone["split"]["num_test_utterances"] == 6 and phone["split"]["num_train_utterances"] == 9
    )
    assert {s["features"] for s in phone["scores"]} == {"pretrained", "random", "logmel"}
    capsys.readouterr()
    demo._probe_table(probes)
    table = capsys.readouterr().out
    assert "phones, unseen voices" in table and "logmel ±4" in table and "chance" in table
