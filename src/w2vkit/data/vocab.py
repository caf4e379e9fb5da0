"""`Vocabulary`: the character set of CTC targets, in fairseq's `Dictionary` index layout.

fairseq reads `dict.ltr.txt` (one `SYMBOL COUNT` line per symbol) into a Dictionary that puts four
special symbols first: `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, then the file's symbols in file
order. fairseq's CTC criterion uses index 0 (`<s>`) as the CTC blank. w2vkit keeps exactly this
layout, so the output layer of a fairseq fine-tuned checkpoint maps row for row; here index 0 is
called the blank. (HF's conversion keeps the same rows and renames index 0 `<pad>`, its blank.)

Targets are letters separated by spaces with `|` as the word boundary (`H E L L O | W O R L D |`).
"""

from __future__ import annotations

import os
from pathlib import Path

from w2vkit.config import ConfigError
from w2vkit.data.text import read_utf8

BLANK, PAD, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq names; <s> is the CTC blank
WORD_SEPARATOR = "|"


class Vocabulary:
    """Index <-> symbol, with the four specials of `SPECIALS` at indices 0-3."""

    def __init__(self, symbols: list[str], counts: list[int] | None = None) -> None:
        """`symbols`: the dictionary file's symbols (the specials are added in front)."""
        clash = [s for s in symbols if s in SPECIALS]
        if clash:
            raise ConfigError(f"symbol {clash[0]!r} is reserved (specials: {', '.join(SPECIALS)})")
        if len(set(symbols)) != len(symbols):
            raise ConfigError("the vocabulary has a duplicate symbol")
        self.symbols = list(SPECIALS) + list(symbols)
        self.counts = list(counts) if counts is not None else [0] * len(symbols)
        self.index = {s: i for i, s in enumerate(self.symbols)}

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.symbols == other.symbols

    @property
    def separator(self) -> int | None:
        """Index of the word boundary `|`, None if the vocabulary has none."""
        return self.index.get(WORD_SEPARATOR)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a fairseq `dict.ltr.txt`: `SYMBOL COUNT` per line (`#fairseq:overwrite` allowed)."""
        path = Path(path)
        symbols, counts = [], []
        for number, line in enumerate(read_utf8(path).splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.removesuffix(" #fairseq:overwrite").rsplit(" ", 1)
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit() or not fields[0]:
                raise ConfigError(f"{path}:{number}: expected 'SYMBOL COUNT', got {line!r}")
            if fields[0] in symbols or fields[0] in SPECIALS:
                raise ConfigError(f"{path}:{number}: duplicate symbol {fields[0]!r}")
            symbols.append(fields[0])
            counts.append(int(fields[1]))
        if not symbols:
            raise ConfigError(f"{path}: no symbols")
        return cls(symbols, counts)

    def save(self, path: str | os.PathLike) -> None:
        """Write `dict.ltr.txt` (the specials are implicit, as in fairseq)."""
        lines = [f"{s} {c}\n" for s, c in zip(self.symbols[4:], self.counts, strict=True)]
        Path(path).write_text("".join(lines), encoding="utf-8")

    def encode(self, letters: str) -> list[int]:
        """`"H I | T H E R E |"` -> indices; an unknown symbol becomes `<unk>`."""
        return [self.index.get(symbol, UNK) for symbol in letters.split()]

    def letters(self, ids: list[int]) -> str:
        """Indices -> `.ltr` form, specials dropped."""
        return " ".join(self.symbols[i] for i in ids if i >= len(SPECIALS) or i == UNK)

    def text(self, ids: list[int]) -> str:
        """Indices -> words: `|` becomes a space (fairseq's `letter` post-processing)."""
        return " ".join(self.letters(ids).replace(" ", "").replace(WORD_SEPARATOR, " ").split())


def letters_from_words(words: str) -> str:
    """`"HI THERE"` -> `"H I | T H E R E |"` (fairseq's `libri_labels.py` layout)."""
    return " ".join(" ".join(word) + " " + WORD_SEPARATOR for word in words.split())


__all__ = [
    "BLANK",
    "EOS",
    "PAD",
    "SPECIALS",
    "UNK",
    "Vocabulary",
    "WORD_SEPARATOR",
    "letters_from_words",
]
