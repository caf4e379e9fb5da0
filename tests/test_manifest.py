"""`w2vkit manifest` and the manifest format (w2vkit.data.manifest, w2vkit.recipes.manifest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import audiogen
import numpy as np
import pytest
import soundfile as sf

from w2vkit.cli import main
from w2vkit.data.manifest import Manifest, read_manifest, write_manifest
from w2vkit.recipes.manifest import split_is_valid

REPO = Path(__file__).resolve().parents[1]

# name -> (seconds, rate, channels): every readable file, with what its header must say
GOOD = {
    "a.wav": (1.0, 16_000, 1),
    "UPPER.WAV": (0.5, 16_000, 1),
    "e.flac": (0.4, 8_000, 2),
    "nested/deep/b.flac": (0.8, 44_100, 2),
    "nested/ünïcode dir/c d é.wav": (0.6, 22_050, 1),
}
SKIPPED = {
    "empty.wav": "empty file (0 bytes)",
    "zero.wav": "no audio frames",
    "fake.flac": "not readable audio: Format not recognised.",
    "nested/broken link.wav": "cannot open: No such file or directory",
}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "corpus"
    for seed, (name, (seconds, rate, channels)) in enumerate(GOOD.items()):
        audiogen.write_tone(root / name, seconds, rate, channels, seed=seed)
    audiogen.truncate(audiogen.write_tone(root / "cut.wav", 1.0), 0.5)  # header still reads
    audiogen.truncate(audiogen.write_tone(root / "cut.flac", 1.0), 0.5)
    (root / "empty.wav").write_bytes(b"")
    sf.write(root / "zero.wav", np.zeros((0, 1), np.float32), 16_000)
    (root / "fake.flac").write_text("not audio at all " * 20)
    (root / "notes.txt").write_text("ignored: not an audio extension")
    (root / "nested" / "broken link.wav").symlink_to(root / "does-not-exist.wav")
    (root / "nested" / "loop").symlink_to(root)  # a cycle: must end
    outside = tmp_path / "elsewhere"
    audiogen.write_tone(outside / "o.wav", 0.3, 16_000, seed=9)
    (root / "linked out").symlink_to(outside)  # a link out of the tree: its files count
    (root / "again.wav").symlink_to(root / "a.wav")  # a second name for a.wav: listed once
    return root


def _rows(manifest_path):
    manifest = read_manifest(manifest_path)
    return {p: int(n) for p, n in zip(manifest.paths, manifest.num_frames, strict=True)}


def _fairseq_read(path):
    """The reading loop of fairseq's FileAudioDataset.__init__."""
    with open(path) as f:
        root = f.readline().strip()
        rows = []
        for line in f:
            items = line.strip().split("\t")
            assert len(items) == 2, line
            rows.append((items[0], int(items[1])))
    return root, rows


def test_manifest_lists_readable_files_and_skips_the_rest(tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            ["manifest", str(tree), "--dest", str(out), "--valid-percent", "0.5", "--workers", "2"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    rows = _rows(out / "train.tsv") | _rows(out / "valid.tsv")
    expected = {name: round(s * r) for name, (s, r, _) in GOOD.items()}
    expected["linked out/o.wav"] = 4_800
    expected["cut.wav"] = sf.info(tree / "cut.wav").frames  # libsndfile counts what is there
    expected["cut.flac"] = 16_000  # the header says 1 s; decoding fails later, in training
    assert rows == expected
    assert 0 < expected["cut.wav"] < 16_000

    skipped = dict(line.split("\t") for line in (out / "skipped.tsv").read_text().splitlines()[1:])
    assert skipped == SKIPPED
    assert "skipped 4 files" in printed
    assert "3 files are not at 16000 Hz (1 at 8000 Hz, 1 at 22050 Hz, 1 at 44100 Hz)" in printed
    assert "2 files have more than one channel" in printed

    for split in ("train", "valid"):
        root, fairseq_rows = _fairseq_read(out / f"{split}.tsv")
        assert root == str(tree.resolve())
        assert fairseq_rows == list(_rows(out / f"{split}.tsv").items())
        assert [p for p, _ in fairseq_rows] == sorted(p for p, _ in fairseq_rows)
        for path, _ in fairseq_rows:
            assert (Path(root) / path).exists()
    meta = read_manifest(out / "train.tsv")
    for path, rate, channels in zip(meta.paths, meta.sample_rates, meta.num_channels, strict=True):
        if path in GOOD:
            assert (rate, channels) == GOOD[path][1:]


def test_split_is_deterministic_for_a_seed_and_stable_when_files_are_added(tmp_path):
    root = tmp_path / "c"
    audiogen.make_corpus(root, 40, (0.05, 0.1))

    def split(seed, dest):
        assert (
            main(
                [
                    "manifest",
                    str(root),
                    "--dest",
                    str(tmp_path / dest),
                    "--seed",
                    str(seed),
                    "--valid-percent",
                    "0.3",
                    "--workers",
                    "1",
                ]
            )
            == 0
        )
        return set(_rows(tmp_path / dest / "valid.tsv"))

    first, again, other = split(1, "s1"), split(1, "s1b"), split(2, "s2")
    assert first == again and first != other
    assert 4 <= len(first) <= 20  # about 30 % of 40
    assert first == {p.name for p in sorted(root.iterdir()) if split_is_valid(p.name, 1, 0.3)}
    audiogen.make_corpus(tmp_path / "more", 10, (0.05, 0.1), seed=5)
    for path in (tmp_path / "more").iterdir():
        path.rename(root / f"new_{path.name}")
    grown = split(1, "s1c")
    assert {p for p in grown if not p.startswith("new_")} == first


def test_filters_and_no_valid_split(tmp_path):
    root = tmp_path / "c"
    for i, seconds in enumerate([0.2, 0.5, 1.0, 2.0]):
        audiogen.write_tone(root / ("keep" if i % 2 else "other") / f"{i}.flac", seconds)
    out = tmp_path / "out"
    assert (
        main(
            [
                "manifest",
                str(root),
                "--dest",
                str(out),
                "--valid-percent",
                "0",
                "--min-seconds",
                "0.3",
                "--max-seconds",
                "1.5",
                "--ext",
                "flac",
            ]
        )
        == 0
    )
    assert set(_rows(out / "train.tsv")) == {"keep/1.flac", "other/2.flac"}
    assert not (out / "valid.tsv").exists()
    reasons = (out / "skipped.tsv").read_text()
    assert "other/0.flac\tshorter than --min-seconds 0.3 (0.200 s)" in reasons
    assert "keep/3.flac\tlonger than --max-seconds 1.5 (2.000 s)" in reasons
    out2 = tmp_path / "out2"
    assert (
        main(
            [
                "manifest",
                str(root),
                "--dest",
                str(out2),
                "--path-must-contain",
                "keep",
                "--valid-percent",
                "0",
            ]
        )
        == 0
    )
    assert set(_rows(out2 / "train.tsv")) == {"keep/1.flac", "keep/3.flac"}


def test_cli_subprocess_exit_codes(tree, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "w2vkit", "manifest"]
    done = subprocess.run(
        command + [str(tree), "--dest", str(tmp_path / "ok")],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "skipped 4 files" in done.stdout
    assert (tmp_path / "ok" / "train.tsv").exists() and (
        tmp_path / "ok" / "train.meta.tsv"
    ).exists()

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.wav").write_bytes(b"")
    (bad / "y.flac").write_text("junk")
    done = subprocess.run(
        command + [str(bad), "--dest", str(tmp_path / "no")],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2  # the files' contents: the user's mistake, not the system's
    assert "skipped 2 files" in done.stdout
    assert (
        done.stderr == f"w2vkit manifest: no readable audio (.wav, .flac, .ogg, .mp3) under {bad}\n"
    )


def test_read_manifest_errors_name_file_and_line(tmp_path):
    path = tmp_path / "m.tsv"
    path.write_text(f"{tmp_path}\na.wav\t100\nb.wav 200\n")
    with pytest.raises(ValueError, match=r"m.tsv:3: expected 'relative_path<TAB>num_frames'"):
        read_manifest(path)
    path.write_text("")
    with pytest.raises(ValueError, match="m.tsv:1: expected the root directory"):
        read_manifest(path)


def test_write_read_round_trip_and_partial_sidecar(tmp_path):
    names = ["a.wav", "dir/ü b.flac", "c.wav"]
    manifest = Manifest(
        tmp_path,
        names,
        np.array([10, 20, 30]),
        np.array([16_000, 44_100, 8_000]),
        np.array([1, 2, 1]),
    )
    write_manifest(tmp_path / "x.tsv", manifest)
    back = read_manifest(tmp_path / "x.tsv")
    assert back.paths == names and back.num_frames.tolist() == [10, 20, 30]
    assert back.sample_rates.tolist() == [16_000, 44_100, 8_000]
    # A manifest cut down by hand still finds its rows in the sidecar; unknown rows get rate 0.
    (tmp_path / "x.tsv").write_text(f"{tmp_path}\nc.wav\t30\nnew.wav\t5\n")
    cut = read_manifest(tmp_path / "x.tsv")
    assert cut.sample_rates.tolist() == [8_000, 0] and cut.num_channels.tolist() == [1, 0]
    with pytest.raises(ValueError, match="contains a tab"):
        write_manifest(tmp_path / "y.tsv", Manifest(tmp_path, ["a\tb.wav"], np.array([1])))


def test_ogg_and_mp3_are_listed_when_asked_for(tmp_path):
    for name in ("v.ogg", "m.mp3", "w.wav"):
        audiogen.write_tone(tmp_path / "c" / name, 0.5, 16_000)
    out = tmp_path / "out"
    assert (
        main(
            [
                "manifest",
                str(tmp_path / "c"),
                "--dest",
                str(out),
                "--ext",
                "ogg,.MP3",
                "--valid-percent",
                "0",
            ]
        )
        == 0
    )
    rows = _rows(out / "train.tsv")
    assert set(rows) == {"v.ogg", "m.mp3"}
    assert all(abs(n - 8_000) <= 1152 for n in rows.values())  # mp3 may round to a 1152-frame


def test_default_extensions_read_every_usable_format(tmp_path, capsys):
    for name in ("a.wav", "b.flac", "c.ogg", "d.mp3", "e.WAV"):
        audiogen.write_tone(tmp_path / "c" / name, 0.5, 16_000)
    (tmp_path / "c" / "f.m4a").write_bytes(b"x")
    (tmp_path / "c" / "readme.txt").write_text("x")
    (tmp_path / "c" / "g.txt").write_text("x")
    (tmp_path / "c" / "LICENSE").write_text("x")
    out = tmp_path / "out"
    assert main(["manifest", str(tmp_path / "c"), "--dest", str(out), "--valid-percent", "0"]) == 0
    assert set(_rows(out / "train.tsv")) == {"a.wav", "b.flac", "c.ogg", "d.mp3", "e.WAV"}
    printed = capsys.readouterr().out
    assert (
        "left out 4 files for their extension (2 .txt, 1 (none), 1 .m4a); "
        "--ext chooses the extensions read\n"
    ) in printed
    assert "skipped 0 files" in printed


def test_hidden_files_and_folders_are_skipped(tmp_path, capsys):
    root = tmp_path / "c"
    audiogen.write_tone(root / "a.wav", 0.5)
    (root / "._a.wav").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    audiogen.write_tone(root / ".git" / "objects" / "b.wav", 0.5)
    audiogen.write_tone(root / "sub" / ".trash" / "c.wav", 0.5)
    audiogen.write_tone(root / "sub" / "d.flac", 0.5)
    (root / ".link").symlink_to(root / "sub")
    out = tmp_path / "out"
    assert main(["manifest", str(root), "--dest", str(out), "--valid-percent", "0"]) == 0
    assert set(_rows(out / "train.tsv")) == {"a.wav", "sub/d.flac"}
    printed = capsys.readouterr().out
    assert "skipped 0 files" in printed and "left out" not in printed


def test_a_rerun_into_the_same_dest_leaves_no_stale_valid_tsv(tmp_path, capsys):
    root = tmp_path / "c"
    audiogen.make_corpus(root, 8, (0.2, 0.3))
    out = tmp_path / "out"

    def manifest(fraction: str) -> set[str]:
        assert main(["manifest", str(root), "--dest", str(out), "--valid-percent", fraction]) == 0
        return {p.name for p in out.iterdir()}

    assert manifest("0.5") == {
        "train.tsv",
        "train.meta.tsv",
        "valid.tsv",
        "valid.meta.tsv",
        "skipped.tsv",
    }
    assert manifest("0") == {"train.tsv", "train.meta.tsv", "skipped.tsv"}
    assert len(_rows(out / "train.tsv")) == 8
    manifest("0.5")
    assert manifest("0.001") == {"train.tsv", "train.meta.tsv", "skipped.tsv"}  # none drew valid
    assert "the validation split is empty" in capsys.readouterr().err
