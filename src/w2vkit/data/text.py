"""Transcripts for CTC fine-tuning in fairseq's layout: normalisation, `.wrd`, `.ltr`, `dict.ltr.txt`.

Normalisation (`normalize_transcript`), in order:
1. Unicode NFKC (ligatures and full-width forms become plain letters); curly apostrophes
   (’ ‘ ʼ) become '.
2. Upper-case.
3. Letters (any script) and digits are kept. Digits stay digits: numbers are not spelled out, so
   write "twelve", not "12", when the audio says the word. An apostrophe is kept between two
   letters or digits (DON'T, O'CLOCK) and dropped elsewhere (quotes, DOGS' -> DOGS).
4. Every other character (punctuation, symbols, `|`) is a word break, like whitespace; runs of
   breaks collapse to one space, so "well-known,yes" -> "WELL KNOWN YES".

fairseq's files (the layout `examples/wav2vec/libri_labels.py` writes): `{split}.wrd` has one
normalised transcript per manifest line, `{split}.ltr` the same letters separated by spaces with
`|` closing every word ("H E L L O | W O R L D |"), and `dict.ltr.txt` one `SYMBOL COUNT` line
per letter (`|` included), most frequent first, ties in code-point order. fairseq's Dictionary
adds its own special symbols (blank/bos, pad, eos, unk) in front when it reads the file.
"""

from __future__ import annotations

import os
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from w2vkit.config import ConfigError

WORD_BOUNDARY = "|"
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'"})


BOM = b"\xef\xbb\xbf"
"""UTF-8 byte-order mark: Windows editors write it; left in, it glues itself to the first symbol."""


def read_utf8(path: str | os.PathLike) -> str:
    """A text file as UTF-8, a leading byte-order mark dropped; other bytes: one line naming them."""
    return decode_utf8(Path(path).read_bytes(), path)


def decode_utf8(data: bytes, path: str | os.PathLike, first_line: int = 1) -> str:
    """`data` (from line `first_line` of `path`) as UTF-8, or a ConfigError naming the line."""
    data = data.removeprefix(BOM) if first_line == 1 else data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data.count(b"\n", 0, err.start)
        raise ConfigError(
            f"{os.fspath(path)}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}): "
            "re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def check_utf8(text: str, where: str) -> str:
    """`text` read with errors="surrogateescape" (paths may be any bytes; text may not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        byte = ord(text[err.start]) - 0xDC00
        raise ConfigError(
            f"{where}: not UTF-8 text (byte 0x{byte:02x}): re-save it as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)"
        ) from None
    return text


def normalize_transcript(text: str) -> str:
    """Upper-case words of letters, digits and inner apostrophes, single-space separated."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).upper()
    kept = []
    for i, char in enumerate(text):
        if char.isalnum() or unicodedata.category(char).startswith("M"):
            kept.append(char)
        elif char == "'" and _is_word_char(text, i - 1) and _is_word_char(text, i + 1):
            kept.append(char)
        else:
            kept.append(" ")
    return " ".join("".join(kept).split())


def _is_word_char(text: str, i: int) -> bool:
    return 0 <= i < len(text) and text[i].isalnum()


def letters(normalized: str) -> str:
    """fairseq `.ltr` line of a normalised transcript: "HI YOU" -> "H I | Y O U |"."""
    return " ".join(" ".join(word) + " " + WORD_BOUNDARY for word in normalized.split())


def letter_counts(ltr_lines: Iterable[str]) -> Counter[str]:
    """How often each symbol (letters and `|`) occurs in `.ltr` lines."""
    counts: Counter[str] = Counter()
    for line in ltr_lines:
        counts.update(line.split())
    return counts


def write_letter_dict(path: str | os.PathLike, counts: Counter[str]) -> None:
    """fairseq `dict.ltr.txt`: `SYMBOL COUNT` lines, most frequent first."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    Path(path).write_text("".join(f"{symbol} {count}\n" for symbol, count in ordered), "utf-8")


def read_letter_dict(path: str | os.PathLike) -> dict[str, int]:
    """`dict.ltr.txt` back as symbol -> count, in file order."""
    counts: dict[str, int] = {}
    lines = read_utf8(path).splitlines()
    for line_number, line in enumerate(lines, start=1):
        fields = line.split(" ")
        if len(fields) != 2 or not fields[1].isdigit() or fields[0] in counts:
            raise ValueError(
                f"{os.fspath(path)}:{line_number}: expected a new 'SYMBOL COUNT', got {line!r}"
            )
        counts[fields[0]] = int(fields[1])
    return counts


def read_transcript_table(path: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """A `relative_path<TAB>transcript` TSV: path -> (transcript, line number).

    An optional first line `path<TAB>transcript` is a header; blank lines are skipped.
    """
    rows: dict[str, tuple[str, int]] = {}
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line_number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n").removeprefix("\ufeff")
            if not line.strip() or (line_number == 1 and line == "path\ttranscript"):
                continue
            name, tab, transcript = line.partition("\t")
            if not tab:
                raise ValueError(
                    f"{os.fspath(path)}:{line_number}: expected "
                    f"'relative_path<TAB>transcript', got {line!r}"
                )
            if name in rows:
                raise ValueError(
                    f"{os.fspath(path)}:{line_number}: {name} already has a transcript on "
                    f"line {rows[name][1]}"
                )
            where = f"{os.fspath(path)}:{line_number}"
            rows[name] = (check_utf8(transcript, where), line_number)
    return rows
