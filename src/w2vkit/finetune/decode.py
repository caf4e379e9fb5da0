"""CTC decoding: greedy (best path), word timings from frame positions, error rates.

Greedy decoding takes the best symbol of every frame, collapses repeats and removes blanks: `a a
<blank> a b b` -> `a a b`. A token keeps the frame where it first appears, from which words get
start and end times (`frame_sec` per frame: 20 ms for wav2vec 2.0's 320-sample stride at 16 kHz).
Beam search with an n-gram language model is in `w2vkit.finetune.beam`.
"""

from __future__ import annotations

from dataclasses import dataclass

import jiwer
from torch import Tensor

from w2vkit.data.vocab import BLANK, SPECIALS, UNK, WORD_SEPARATOR, Vocabulary


@dataclass
class Hypothesis:
    tokens: list[int]
    """Vocabulary indices, blanks removed, repeats collapsed."""
    frames: list[int]
    """Frame of each token's first appearance."""


def greedy_decode(logits: Tensor, lengths: Tensor | None = None) -> list[Hypothesis]:
    """Best path of each row. Shape: logits (B, T, V), lengths (B,) valid frames -> B hypotheses."""
    best = logits.argmax(-1).cpu()  # (B, T)
    num_frames = best.shape[1]
    lengths_list = [num_frames] * best.shape[0] if lengths is None else lengths.tolist()
    return [
        collapse(row[: int(length)])
        for row, length in zip(best.tolist(), lengths_list, strict=True)
    ]


def collapse(path: list[int]) -> Hypothesis:
    """A frame labelling -> its CTC output: repeats merged, then blanks removed."""
    tokens, frames = [], []
    previous = None
    for frame, token in enumerate(path):
        if token != previous and token != BLANK:
            tokens.append(token)
            frames.append(frame)
        previous = token
    return Hypothesis(tokens, frames)


def word_times(
    hypothesis: Hypothesis, vocab: Vocabulary, frame_sec: float
) -> list[dict[str, object]]:
    """Words with `start` (first letter's frame) and `end` (after the last letter's frame), seconds."""
    words: list[dict[str, object]] = []
    letters: list[str] = []
    first = last = 0
    for token, frame in [*zip(hypothesis.tokens, hypothesis.frames, strict=True), (None, 0)]:
        if token is not None and token < len(SPECIALS) and token != UNK:
            continue  # <pad>, </s> (and the blank): not letters, as in `Vocabulary.letters`
        symbol = None if token is None else vocab.symbols[token]
        if symbol is None or symbol == WORD_SEPARATOR:
            if letters:
                words.append(
                    {
                        "word": "".join(letters),
                        "start": round(first * frame_sec, 3),
                        "end": round((last + 1) * frame_sec, 3),
                    }
                )
            letters = []
            continue
        if not letters:
            first = frame
        letters.append(symbol)
        last = frame
    return words


@dataclass
class ErrorCounts:
    """Edit operations summed over utterances; `rate` = errors / reference length."""

    errors: int = 0
    length: int = 0

    def add(self, other: ErrorCounts) -> None:
        self.errors += other.errors
        self.length += other.length

    @property
    def rate(self) -> float:
        return self.errors / max(self.length, 1)


def word_errors(references: list[str], hypotheses: list[str]) -> ErrorCounts:
    """Substitutions + deletions + insertions over words (jiwer); an empty reference counts
    its hypothesis words as insertions (jiwer refuses empty references)."""
    return _errors(references, hypotheses, jiwer.process_words, str.split)


def char_errors(references: list[str], hypotheses: list[str]) -> ErrorCounts:
    """The same over characters (spaces included, as jiwer's CER)."""
    return _errors(references, hypotheses, jiwer.process_characters, list)


def _errors(references, hypotheses, process, units) -> ErrorCounts:
    counts = ErrorCounts()
    pairs = [(r, h) for r, h in zip(references, hypotheses, strict=True) if r.strip()]
    for ref, hyp in zip(references, hypotheses, strict=True):
        if not ref.strip():
            counts.errors += len(units(hyp.strip()))
    if pairs:
        out = process([r for r, _ in pairs], [h for _, h in pairs])
        counts.errors += out.substitutions + out.deletions + out.insertions
        counts.length += out.hits + out.substitutions + out.deletions
    return counts


__all__ = [
    "ErrorCounts",
    "Hypothesis",
    "char_errors",
    "collapse",
    "greedy_decode",
    "word_errors",
    "word_times",
]
