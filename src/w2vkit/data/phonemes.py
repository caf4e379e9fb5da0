"""Phoneme tokenizer: text -> eSpeak NG phonemes (IPA) -> ids, with a saved vocabulary.

Grapheme-to-phoneme conversion is eSpeak NG's (`w2vkit.data.synth.phonemize`), so the phonemes
are the names that `synthesize_with_phones` gives the phones of synthesised speech. Ids:
0 `<pad>`, 1 `<unk>` (a phoneme not in the vocabulary), 2 `|` (after each word), then the
phonemes seen by `fit`, sorted. The vocabulary is a JSON file (`save` / `load`), so the ids of a
trained model's embedding table never depend on which texts a later run sees.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from w2vkit.data.synth import phonemize
from w2vkit.embed.layers import check_token_ids

PAD, UNK, WORD_BOUNDARY = "<pad>", "<unk>", "|"
SPECIAL_TOKENS = (PAD, UNK, WORD_BOUNDARY)
PAD_ID, UNK_ID, WORD_BOUNDARY_ID = 0, 1, 2
_FORMAT = "w2vkit-phoneme-vocabulary"
_VERSION = 1


def phoneme_tokens(text: str, *, voice: str = "en", stress: bool = False) -> list[str]:
    """eSpeak NG's phonemes of `text`, WORD_BOUNDARY closing each word (as `|` in fairseq's
    `.ltr`): "hello world" -> h ə l əʊ | w ɜː l d |."""
    tokens: list[str] = []
    for word in phonemize(text, voice=voice, stress=stress):
        tokens += [*word, WORD_BOUNDARY]
    return tokens


@dataclass(frozen=True)
class PhonemeTokenizer:
    """Text to phoneme ids. `tokens[i]` is the token of id i (SPECIAL_TOKENS first)."""

    tokens: tuple[str, ...]
    voice: str = "en"  # eSpeak NG voice of the grapheme-to-phoneme rules
    stress: bool = False  # keep stress marks: "ˈəʊ" and "əʊ" are then different tokens

    def __post_init__(self) -> None:
        if tuple(self.tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(
                f"the vocabulary must start with {list(SPECIAL_TOKENS)}, "
                f"got {list(self.tokens[:3])}"
            )
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("the vocabulary holds a token twice")

    @classmethod
    def fit(
        cls, texts: Iterable[str], *, voice: str = "en", stress: bool = False
    ) -> PhonemeTokenizer:
        """A tokenizer whose vocabulary is every phoneme of `texts`."""
        seen: set[str] = set()
        for text in texts:
            seen.update(p for word in phonemize(text, voice=voice, stress=stress) for p in word)
        return cls(SPECIAL_TOKENS + tuple(sorted(seen)), voice=voice, stress=stress)

    def __len__(self) -> int:
        return len(self.tokens)

    def phonemes(self, text: str) -> list[str]:
        """The tokens of `text`: phonemes, WORD_BOUNDARY after each word."""
        return phoneme_tokens(text, voice=self.voice, stress=self.stress)

    def encode(self, text: str) -> list[int]:
        """Ids of `text`'s phonemes; a phoneme outside the vocabulary is UNK_ID."""
        return [self._ids.get(token, UNK_ID) for token in self.phonemes(text)]

    @cached_property
    def _ids(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.tokens)}

    def decode(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        """Tokens of `ids`; an id outside [0, len(self)) raises, naming it and the table size."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        check_token_ids(ids, len(self))
        return [self.tokens[i] for i in ids.reshape(-1).tolist()]

    def save(self, path: str | os.PathLike) -> None:
        content = {
            "format": _FORMAT,
            "version": _VERSION,
            "voice": self.voice,
            "stress": self.stress,
            "tokens": list(self.tokens),
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(content, f, ensure_ascii=False, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> PhonemeTokenizer:
        with open(path, encoding="utf-8") as f:
            try:
                content = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{os.fspath(path)}: not JSON: {err}") from err
        if not isinstance(content, dict) or content.get("format") != _FORMAT:
            raise ValueError(f"{os.fspath(path)}: not a w2vkit phoneme vocabulary")
        if content.get("version") != _VERSION:
            raise ValueError(
                f"{os.fspath(path)}: vocabulary version {content.get('version')}, "
                f"this w2vkit reads version {_VERSION}"
            )
        tokens = content.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"{os.fspath(path)}: 'tokens' must be a list of strings")
        try:
            return cls(tuple(tokens), voice=str(content["voice"]), stress=bool(content["stress"]))
        except (KeyError, ValueError) as err:
            raise ValueError(f"{os.fspath(path)}: {err}") from err
