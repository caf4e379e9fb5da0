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

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
Ngram = tuple[str, ...]


class KneserNeyModel:
    """Interpolated Kneser-Ney n-gram model of `order` estimated from tokenised sentences."""

    def __init__(self, sentences: Iterable[list[str]], order: int) -> None:
        if order < 2:
            raise ValueError(f"order must be >= 2 (KenLM reads bigram models and up), got {order}")
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


def read_sentences(path: str | os.PathLike) -> list[list[str]]:
    """Whitespace-tokenised non-empty lines of a text file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.split() for line in lines if line.strip()]


__all__ = ["BOS", "EOS", "UNK", "KneserNeyModel", "read_sentences"]
