"""A small n-gram language model builder: interpolated Kneser-Ney, written as an ARPA file.

KenLM's Python package can read and query models but has no `lmplz` to estimate them, so w2vkit
estimates its own (Chen & Goodman, 1998, "An empirical study of smoothing techniques", Sec. 3.5,
with one discount per order), enough for the small domain LMs of a demo or a test set:

    p(w | h) = max(a(h w) - D_n, 0) / A(h) + gamma(h) * p(w | h')       gamma(h) = D_n N(h .) / A(h)

h' drops the oldest word of h; A(h) = sum over w of a(h w); N(h .) = number of distinct w after h.
a() is the raw count at the highest order and for n-grams that start with `<s>` (nothing can
precede them), and the number of distinct left neighbours (continuation count) otherwise, as
lmplz. D_n = n1 / (n1 + 2 n2) from the counts of counts of a() at order n, `<s>` excluded (0.5
when undefined).
Unigrams interpolate with the uniform distribution over the vocabulary (words, `</s>`, `<unk>`).
A context never seen backs off with weight 1. Because the model is interpolated, ARPA stores the
interpolated p(w | h) of every seen n-gram and gamma(h) as the backoff weight of every context, and
a backoff reader (KenLM) computes exactly the probabilities above.
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from w2vkit.config import ConfigError
from w2vkit.data.text import decode_utf8, read_utf8

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
Ngram = tuple[str, ...]
MAX_ORDER = 6
"""KenLM's default KENLM_MAX_ORDER, the one flashlight-text's wheels are built with."""
KENLM_BINARY = b"mmap lm "
"""How a KenLM binary model starts (`build_binary` output): not text, not checked here."""


class KneserNeyModel:
    """Interpolated Kneser-Ney n-gram model of `order` estimated from tokenised sentences."""

    def __init__(self, sentences: Iterable[list[str]], order: int) -> None:
        if not 2 <= order <= MAX_ORDER:
            raise ValueError(
                f"order must be 2 to {MAX_ORDER} (KenLM reads bigram models up to order "
                f"{MAX_ORDER}), got {order}"
            )
        self.order = order
        raw: list[Counter[Ngram]] = [Counter() for _ in range(order + 1)]  # raw[n][ngram]
        num_sentences = 0
        for words in sentences:
            tokens = (BOS, *words, EOS)
            num_sentences += 1
            for n in range(1, order + 1):
                for i in range(len(tokens) - n + 1):
                    raw[n][tokens[i : i + n]] += 1
        if num_sentences == 0:
            raise ValueError("no sentences to estimate a language model from")
        self.adjusted = self._adjust(raw)
        self.vocab = sorted({g[0] for g in raw[1]} - {BOS} | {EOS, UNK})
        self.discounts = [0.0] + [self._discount(self.adjusted[n]) for n in range(1, order + 1)]
        # Per order and context: A(h) and N(h .) over the predicted words (never <s>).
        self.context_sum: list[dict[Ngram, float]] = [defaultdict(float) for _ in range(order + 1)]
        self.context_types: list[dict[Ngram, int]] = [defaultdict(int) for _ in range(order + 1)]
        for n in range(1, order + 1):
            for gram, count in self.adjusted[n].items():
                if gram[-1] != BOS:
                    self.context_sum[n][gram[:-1]] += count
                    self.context_types[n][gram[:-1]] += 1
        self.prob = lru_cache(maxsize=None)(self._prob)

    def _adjust(self, raw: list[Counter[Ngram]]) -> list[dict[Ngram, float]]:
        adjusted: list[dict[Ngram, float]] = [{} for _ in range(self.order + 1)]
        adjusted[self.order] = dict(raw[self.order])
        for n in range(1, self.order):
            left = Counter(gram[1:] for gram in raw[n + 1])  # distinct left neighbours
            adjusted[n] = {g: float(c if g[0] == BOS else left[g]) for g, c in raw[n].items()}
            adjusted[n] = {g: a for g, a in adjusted[n].items() if a > 0}
        return adjusted

    @staticmethod
    def _discount(counts: dict[Ngram, float]) -> float:
        predicted = [a for gram, a in counts.items() if gram[-1] != BOS]  # <s> is never predicted
        n1 = sum(1 for a in predicted if a == 1)
        n2 = sum(1 for a in predicted if a == 2)
        discount = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
        return discount if 0 < discount < 1 else 0.5

    def gamma(self, context: Ngram) -> float | None:
        """Interpolation weight of `context` (None: never seen as a context)."""
        n = len(context) + 1
        total = self.context_sum[n].get(context)
        if not total:
            return None
        return self.discounts[n] * self.context_types[n][context] / total

    def _prob(self, word: str, context: Ngram) -> float:
        """p(word | context), `context` of at most order - 1 words (recursive, from the counts)."""
        context = context[max(0, len(context) - self.order + 1) :]
        if word not in self.vocab:
            word = UNK
        n = len(context) + 1
        lower = self.prob(word, context[1:]) if context else 1.0 / len(self.vocab)
        gamma = self.gamma(context)
        if gamma is None:
            return lower
        count = self.adjusted[n].get((*context, word), 0.0)
        return max(count - self.discounts[n], 0.0) / self.context_sum[n][context] + gamma * lower

    def score(self, words: list[str]) -> float:
        """log10 p(words </s> | <s>), as KenLM's `Model.score(sentence, bos=True, eos=True)`."""
        tokens = [BOS, *[w if w in self.vocab else UNK for w in words], EOS]
        return sum(
            math.log10(self.prob(tokens[i], tuple(tokens[max(0, i - self.order + 1) : i])))
            for i in range(1, len(tokens))
        )

    def write_arpa(self, path: str | os.PathLike) -> None:
        """Every seen n-gram with log10 p and, for contexts, log10 gamma (ARPA format)."""
        sections = []
        for n in range(1, self.order + 1):
            grams = (
                [(w,) for w in [*sorted(self.vocab), BOS]] if n == 1 else sorted(self.adjusted[n])
            )
            lines = []
            for gram in grams:
                if gram[-1] == BOS:
                    logp = -99.0  # <s> is never predicted
                else:
                    logp = math.log10(self.prob(gram[-1], gram[:-1]))
                line = f"{logp:.7f}\t{' '.join(gram)}"
                gamma = self.gamma(gram) if n < self.order else None
                if gamma is not None:
                    line += f"\t{math.log10(gamma):.7f}"
                lines.append(line)
            sections.append((n, lines))
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n\\data\\\n")
            for n, lines in sections:
                f.write(f"ngram {n}={len(lines)}\n")
            for n, lines in sections:
                f.write(f"\n\\{n}-grams:\n")
                f.write("\n".join(lines) + "\n")
            f.write("\n\\end\\\n")


def read_arpa_unigrams(path: str | os.PathLike) -> list[str] | None:
    """Check an ARPA file as KenLM will read it, before KenLM does; its unigrams (None: binary).

    KenLM trusts the header: a truncated file, a count it cannot hold (`ngram 1=9999999999`
    reserves that much memory), a NaN or an order it was not built for end in a crash or an
    exhausted machine, not in a message. Streams the file (one line in memory).
    """
    path = Path(path)
    declared: dict[int, int] = {}
    found: dict[int, int] = {}
    unigrams: list[str] = []
    section: str | int | None = None
    with open(path, "rb") as f:
        if f.read(len(KENLM_BINARY)) == KENLM_BINARY:
            return None
        f.seek(0)
        for number, raw in enumerate(f, start=1):
            line = decode_utf8(raw, path, number).strip().removeprefix("\ufeff")
            where = f"{path}:{number}"
            if not line:
                continue
            if line == "\\end\\":
                section = "end"
                break
            if line == "\\data\\":
                section = "data"
            elif line.startswith("\\") and line.endswith("-grams:"):
                order = line[1 : -len("-grams:")]
                if not order.isdigit() or int(order) not in declared:
                    raise ConfigError(f"{where}: {line} is not declared in the \\data\\ header")
                section = int(order)
                found[section] = 0
            elif section == "data":
                _header_count(line, where, declared)
            elif isinstance(section, int):
                found[section] += 1
                words = _arpa_entry(line, section, where)
                if section == 1:
                    unigrams.append(words[0])
            else:
                raise ConfigError(f"{where}: expected the \\data\\ header, got {line[:40]!r}")
    _check_counts(path, declared, found, complete=section == "end")
    return unigrams


def _header_count(line: str, where: str, declared: dict[int, int]) -> None:
    """`ngram N=COUNT` of the `\\data\\` section, orders 1, 2, ... up to MAX_ORDER."""
    key, _, count = line.partition("=")
    order = key.removeprefix("ngram").strip()
    if not key.startswith("ngram") or not order.isdigit() or not count.strip().isdigit():
        raise ConfigError(f"{where}: expected 'ngram N=COUNT', got {line[:40]!r}")
    if int(order) != len(declared) + 1:
        raise ConfigError(f"{where}: expected the count of order {len(declared) + 1}")
    if int(order) > MAX_ORDER:
        raise ConfigError(
            f"{where}: order {order}: KenLM (as built in flashlight-text) reads at most order "
            f"{MAX_ORDER}; rebuild with w2vkit lm build --order {MAX_ORDER} or less"
        )
    declared[int(order)] = int(count)


def _arpa_entry(line: str, order: int, where: str) -> list[str]:
    """The words of `log10p w1 .. wn [log10backoff]`, after checking its numbers."""
    fields = line.split()
    if len(fields) not in (order + 1, order + 2):
        raise ConfigError(f"{where}: expected a {order}-gram line, got {line[:60]!r}")
    for number in (fields[0], *fields[order + 1 :]):
        try:
            value = float(number)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {number!r} is not a finite log10 probability")
    return fields[1 : order + 1]


def _check_counts(
    path: Path, declared: dict[int, int], found: dict[int, int], *, complete: bool
) -> None:
    if not declared:
        raise ConfigError(f"{path}: not an ARPA file (no \\data\\ header)")
    for order, count in declared.items():
        if found.get(order, 0) != count:
            raise ConfigError(
                f"{path}: the header declares {count} {order}-grams, the file has "
                f"{found.get(order, 0)}: a truncated or edited file; rebuild it"
            )
    if not complete:
        raise ConfigError(f"{path}: no \\end\\ line: a truncated file; rebuild it")
    if len(declared) < 2:
        raise ConfigError(
            f"{path}: a unigram model: KenLM needs order 2 or more (w2vkit lm build --order 2)"
        )


def read_sentences(path: str | os.PathLike) -> list[list[str]]:
    """Whitespace-tokenised non-empty lines of a text file."""
    lines = read_utf8(path).splitlines()
    return [line.split() for line in lines if line.strip()]


__all__ = [
    "BOS",
    "EOS",
    "MAX_ORDER",
    "UNK",
    "KneserNeyModel",
    "read_arpa_unigrams",
    "read_sentences",
]
