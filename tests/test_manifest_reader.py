"""`read_manifest` refuses what a run would trip over later, naming file and line."""

from __future__ import annotations

import os
import re
import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from w2vkit.config import UsageError
from w2vkit.data.manifest import MAX_FRAMES, Manifest, read_manifest, write_manifest


def _read_error(tmp_path, text: str | bytes) -> str:
    path = tmp_path / "m.tsv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text.replace("ROOT", str(tmp_path)), encoding="utf-8")
    with pytest.raises(UsageError) as err:
        read_manifest(path)
    return str(err.value).replace(str(tmp_path), "TMP")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "TMP/m.tsv:1: expected the root directory on the first line"),
        (
            "a.wav\t100\nb.wav\t200\n",
            "TMP/m.tsv:1: expected the root directory on the first line, got what looks like a "
            "data line ('a.wav\\t100'); add the folder the paths are relative to as line 1",
        ),
        ("/no/such/root\na.wav\t1\n", "TMP/m.tsv:1: the root directory '/no/such/root' does not exist"),
        ("ROOT\na.wav\t100\nb.wav 200\n", "TMP/m.tsv:3: expected 'relative_path<TAB>num_frames', got 'b.wav 200'"),
        ("ROOT\na.wav\t1\tx\n", "TMP/m.tsv:2: expected 'relative_path<TAB>num_frames', got 'a.wav\\t1\\tx'"),
        ("ROOT\na.wav\tabc\n", "TMP/m.tsv:2: num_frames 'abc' is not a whole number"),
        ("ROOT\na.wav\t-5\n", "TMP/m.tsv:2: num_frames '-5' is not a whole number"),
        ("ROOT\na.wav\t1.5\n", "TMP/m.tsv:2: num_frames '1.5' is not a whole number"),
        ("ROOT\na.wav\t²\n", "TMP/m.tsv:2: num_frames '²' is not a whole number"),  # isdigit() says yes
        (
            "ROOT\na.wav\t1\nb.wav\t" + "9" * 30 + "\n",
            f"TMP/m.tsv:3: num_frames {'9' * 30} is not plausible (not below {MAX_FRAMES:,})",
        ),
        (
            "ROOT\n../../etc/passwd\t10\n",
            "TMP/m.tsv:2: path '../../etc/passwd' leaves the root directory; manifest paths must "
            "be relative to the root on line 1 and stay inside it",
        ),
        ("ROOT\nok.wav\t1\n/etc/passwd\t10\n", "TMP/m.tsv:3: path '/etc/passwd' leaves the root"),
        ("ROOT\nsub/../../x.wav\t10\n", "TMP/m.tsv:2: path 'sub/../../x.wav' leaves the root"),
    ],
)  # fmt: skip
def test_bad_lines_are_refused_with_file_and_line(tmp_path, text, message):
    assert _read_error(tmp_path, text).startswith(message)


def test_an_audio_file_given_as_a_manifest_is_named_without_its_bytes(tmp_path):
    import soundfile as sf

    for fmt in ("WAV", "FLAC", "OGG"):
        wav = tmp_path / f"a.{fmt.lower()}"
        sf.write(wav, np.zeros(1600, np.float32), 16_000, format=fmt)
        with pytest.raises(UsageError) as err:
            read_manifest(wav)
        assert str(err.value) == (
            f"{wav}:1: not a text manifest (binary data: an audio file?); a manifest is a .tsv "
            "written by `w2vkit manifest AUDIO_DIR --dest DIR`"
        )


def test_binary_data_below_a_good_root_is_named_by_line(tmp_path):
    message = _read_error(tmp_path, f"{tmp_path}\na.wav\t5\n".encode() + b"RIFF\x00\x01\x02\n")
    assert message.startswith("TMP/m.tsv:3: not a text manifest (binary data")
    assert "\\x00" not in message and "RIFF" not in message


def test_a_folder_given_as_a_manifest_points_at_its_train_tsv(tmp_path):
    with pytest.raises(UsageError, match=re.escape(f"{tmp_path} is a folder, not a manifest file")):
        read_manifest(tmp_path)
    write_manifest(tmp_path / "train.tsv", Manifest(tmp_path, ["a.wav"], np.array([3])))
    with pytest.raises(UsageError) as err:
        read_manifest(tmp_path)
    assert str(err.value).endswith(f"; did you mean {tmp_path / 'train.tsv'}?")
    with pytest.raises(UsageError, match="manifest .*nope.tsv does not exist"):
        read_manifest(tmp_path / "nope.tsv")


def test_sidecar_values_are_checked_too(tmp_path):
    write_manifest(tmp_path / "t.tsv", Manifest(tmp_path, ["a.wav"], np.array([3]), [16_000], [1]))
    (tmp_path / "t.meta.tsv").write_text(
        "path\tsample_rate\tnum_channels\na.wav\t1" + "0" * 25 + "\t1\n"
    )
    with pytest.raises(UsageError, match=r"t.meta.tsv:2: sample_rate 10+ is not plausible"):
        read_manifest(tmp_path / "t.tsv")


def test_paths_that_stay_inside_the_root_are_kept(tmp_path):
    names = ["a.wav", "sub/../b.wav", "..c.wav", "d../e.wav", "ü/é f.flac"]
    (tmp_path / "m.tsv").write_text(f"{tmp_path}\n" + "".join(f"{n}\t7\n" for n in names))
    assert read_manifest(tmp_path / "m.tsv").paths == names


_NAME_CHARS = st.characters(blacklist_characters="\t\n\0/", blacklist_categories=("Cs",))
_PARTS = st.text(_NAME_CHARS, min_size=1, max_size=8).filter(lambda p: p not in (".", ".."))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.lists(_PARTS, min_size=1, max_size=3), st.integers(0, MAX_FRAMES - 1)),
        max_size=12,
    )
)
def test_every_manifest_written_reads_back_exactly(tmp_path_factory, rows):
    root = tmp_path_factory.mktemp("root")
    paths = [os.path.join(*parts) for parts, _ in rows]
    frames = np.array([n for _, n in rows], dtype=np.int64)
    write_manifest(root / "m.tsv", Manifest(root, paths, frames))
    back = read_manifest(root / "m.tsv")
    assert back.root == root.resolve() and back.paths == paths
    assert back.num_frames.tolist() == frames.tolist()


@settings(max_examples=200, deadline=None)
@given(line=st.text(string.printable + "é²\x00", max_size=30))
def test_any_data_line_reads_or_fails_as_a_usage_error(tmp_path_factory, line):
    root = tmp_path_factory.mktemp("root")
    path = root / "m.tsv"
    path.write_text(f"{root}\n{line}\n", encoding="utf-8")
    try:
        manifest = read_manifest(path)
    except UsageError as err:
        assert f"{path}:" in str(err)
    else:  # what was accepted is one row (or none, for an empty line) inside the root
        assert len(manifest) <= 1
        for name in manifest.paths:
            assert not os.path.isabs(name) and not os.path.normpath(name).startswith("..")
