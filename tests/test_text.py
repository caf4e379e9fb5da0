"""Transcript normalisation and fairseq's letter files."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from w2vkit.data.text import (
    letter_counts,
    letters,
    normalize_transcript,
    read_letter_dict,
    read_transcript_table,
    write_letter_dict,
)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Hello, world!", "HELLO WORLD"),
        ("  don't   STOP\tnow\n", "DON'T STOP NOW"),
        ("It’s o’clock", "IT'S O'CLOCK"),  # curly apostrophes
        ("'Quoted' dogs' bones", "QUOTED DOGS BONES"),  # quotes and trailing apostrophes go
        ("well-known,yes/no", "WELL KNOWN YES NO"),  # punctuation is a word break
        ("a | b", "A B"),  # the word-boundary symbol cannot appear in a word
        ("route 66 at 9:30", "ROUTE 66 AT 9 30"),  # digits stay digits
        ("ﬁne café", "FINE CAFÉ"),  # NFKC ligature, accented letter kept
        ("?!", ""),
    ],
)
def test_normalization(raw, normalized):
    assert normalize_transcript(raw) == normalized


def test_letters_have_a_boundary_after_every_word():
    assert letters("HELLO WORLD") == "H E L L O | W O R L D |"
    assert letters("DON'T") == "D O N ' T |"
    assert letters("") == ""


def test_letter_dict_is_sorted_by_count_and_round_trips(tmp_path):
    ltr = [letters("HELLO WORLD"), letters("OLD")]
    counts = letter_counts(ltr)
    assert counts == Counter({"|": 3, "L": 4, "O": 3, "D": 2, "H": 1, "E": 1, "W": 1, "R": 1})
    write_letter_dict(tmp_path / "dict.ltr.txt", counts)
    text = (tmp_path / "dict.ltr.txt").read_text()
    assert text.splitlines()[:4] == ["L 4", "O 3", "| 3", "D 2"]  # ties: code-point order
    assert read_letter_dict(tmp_path / "dict.ltr.txt") == dict(counts)
    (tmp_path / "bad.txt").write_text("A 1\nB two\n")
    with pytest.raises(ValueError, match=re.escape("bad.txt:2: expected a new 'SYMBOL COUNT'")):
        read_letter_dict(tmp_path / "bad.txt")


def test_transcript_table(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("path\ttranscript\na.flac\tHello there\n\nb/c.flac\tone\ttwo\n")
    assert read_transcript_table(path) == {
        "a.flac": ("Hello there", 2),
        "b/c.flac": ("one\ttwo", 4),
    }
    path.write_text("a.flac\tone\nno tab here\n")
    with pytest.raises(
        ValueError, match=re.escape("t.tsv:2: expected 'relative_path<TAB>transcript'")
    ):
        read_transcript_table(path)
    path.write_text("a.flac\tone\na.flac\ttwo\n")
    with pytest.raises(
        ValueError, match=re.escape("t.tsv:2: a.flac already has a transcript on line 1")
    ):
        read_transcript_table(path)
