"""CTC beam search with a KenLM n-gram model, through flashlight-text's decoders.

Why flashlight-text: it installs from PyPI as a binary wheel with KenLM built in (no compiler, no
numpy pin), it is maintained by the Flashlight team and is the decoder behind torchaudio's
`ctc_decoder`, and it has both modes w2vkit offers (pyctcdecode, the other candidate, pins
numpy < 2 and has no lexicon mode).

- Lexicon mode (default): the LM is over words; a lexicon maps each word to its spelling
  (`C A T |`), so hypotheses only contain lexicon words. Without a lexicon file the words of the
  ARPA model's unigrams are spelled letter by letter. Scores: acoustic + `lm_weight` * LM +
  `word_score` per word (+ `unk_score` for an out-of-lexicon word, -inf by default: none).
- Lexicon-free mode: the LM is over the CTC symbols themselves (a letter LM, e.g. built from the
  `.ltr` files with `w2vkit lm build --letters`), and any spelling may come out; `sil_score` is
  added at each word boundary `|`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from w2vkit.config import ConfigError
from w2vkit.data.text import read_utf8
from w2vkit.data.vocab import BLANK, WORD_SEPARATOR, Vocabulary
from w2vkit.finetune.decode import Hypothesis, collapse
from w2vkit.finetune.ngram import BOS, EOS, UNK, read_arpa_unigrams


@dataclass(kw_only=True)
class BeamOptions:
    beam_size: int = 50
    beam_threshold: float = 25.0
    """Drop hypotheses scoring this much below the best one."""
    lm_weight: float = 2.0
    word_score: float = 0.0
    """Added per emitted word (word insertion bonus; negative: penalty)."""
    unk_score: float = -math.inf
    sil_score: float = 0.0


def read_lexicon(path: str | os.PathLike) -> dict[str, list[list[str]]]:
    """`WORD t1 t2 ... |` per line (several lines per word: alternative spellings)."""
    lexicon: dict[str, list[list[str]]] = {}
    for number, line in enumerate(read_utf8(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise ConfigError(f"{path}:{number}: expected 'WORD t1 t2 ... |', got {line!r}")
        lexicon.setdefault(fields[0], []).append(fields[1:])
    return lexicon


def lexicon_from_arpa(path: str | os.PathLike) -> dict[str, list[list[str]]]:
    """Each unigram of an ARPA file spelled letter by letter, then `|`."""
    words = read_arpa_unigrams(path)
    if words is None:
        raise ConfigError(f"{path}: a KenLM binary: give its words with --lexicon")
    return {w: [[*w, WORD_SEPARATOR]] for w in words if w not in (BOS, EOS, UNK)}


def check_letter_lm(path: str | os.PathLike, words: list[str] | None, vocab: Vocabulary) -> None:
    """A lexicon-free LM (unigram `words`) must be over the CTC symbols: a word LM would score
    every letter `<unk>`. A binary model's words are unknown here (None): not checked."""
    strangers = [w for w in words or () if w not in vocab.index and w not in (BOS, EOS, UNK)]
    if strangers:
        raise ConfigError(
            f"--lexicon-free needs a letter LM (w2vkit lm build --letters), but {path} has "
            f"{len(strangers)} unigrams that are not symbols of the model, such as "
            f"{strangers[0]!r}: leave out --lexicon-free to decode with this word LM"
        )


class BeamSearchDecoder:
    """Decodes one utterance's log-probabilities (T, V) into a `Hypothesis`."""

    def __init__(
        self,
        vocab: Vocabulary,
        lm_path: str | os.PathLike,
        *,
        lexicon: dict[str, list[list[str]]] | None,
        options: BeamOptions,
    ) -> None:
        try:
            from flashlight.lib.text import decoder as fl
            from flashlight.lib.text.decoder.kenlm import KenLM
            from flashlight.lib.text.dictionary import Dictionary
        except ImportError as err:
            raise ConfigError(
                "LM decoding needs flashlight-text: pip install 'w2vkit[decode]'"
            ) from err
        separator = vocab.separator
        if separator is None:
            raise ConfigError(f"the vocabulary has no word boundary {WORD_SEPARATOR!r}")
        tokens = Dictionary(vocab.symbols)
        self.vocab = vocab
        o = options
        lm_words = read_arpa_unigrams(lm_path)  # checked before KenLM trusts its header
        if lexicon is None:
            check_letter_lm(lm_path, lm_words, vocab)
            lm = KenLM(str(lm_path), tokens)
            decoder_options = fl.LexiconFreeDecoderOptions(
                beam_size=o.beam_size, beam_size_token=len(vocab), beam_threshold=o.beam_threshold,
                lm_weight=o.lm_weight, sil_score=o.sil_score, log_add=False,
                criterion_type=fl.CriterionType.CTC,
            )  # fmt: skip
            self.decoder = fl.LexiconFreeDecoder(decoder_options, lm, separator, BLANK, [])
        else:
            words = Dictionary([*lexicon, UNK])
            words.set_default_index(words.get_index(UNK))
            lm = KenLM(str(lm_path), words)
            trie = fl.Trie(len(vocab), separator)
            start = lm.start(False)
            for word, spellings in lexicon.items():
                index = words.get_index(word)
                _, score = lm.score(start, index)
                for spelling in spellings:
                    unknown = [t for t in spelling if t not in vocab.index]
                    if unknown:
                        raise ConfigError(
                            f"lexicon word {word!r}: symbol {unknown[0]!r} not in the vocabulary"
                        )
                    trie.insert([vocab.index[t] for t in spelling], index, score)
            trie.smear(fl.SmearingMode.MAX)
            decoder_options = fl.LexiconDecoderOptions(
                beam_size=o.beam_size, beam_size_token=len(vocab), beam_threshold=o.beam_threshold,
                lm_weight=o.lm_weight, word_score=o.word_score, unk_score=o.unk_score,
                sil_score=o.sil_score, log_add=False, criterion_type=fl.CriterionType.CTC,
            )  # fmt: skip
            unk = words.get_index(UNK)
            self.decoder = fl.LexiconDecoder(
                decoder_options, trie, lm, separator, BLANK, unk, [], False
            )
        self._keep = (lm, tokens)  # the decoder holds raw pointers to these
        self.lexicon_mode = lexicon is not None

    def decode(self, log_probs: torch.Tensor) -> Hypothesis:
        """Shape: log_probs (T, V) of one utterance (no padding) -> the best hypothesis."""
        emissions = np.ascontiguousarray(log_probs.detach().float().cpu().numpy())
        num_frames, vocab_size = emissions.shape
        results = self.decoder.decode(emissions.ctypes.data, num_frames, vocab_size)
        if not results:
            return Hypothesis([], [])
        path = list(results[0].tokens)[1 : num_frames + 1]  # a boundary token pads each end
        hyp = collapse(path)
        if self.lexicon_mode:  # letters after the last `|` spell no complete lexicon word yet
            separator = self.vocab.separator
            keep = max((i + 1 for i, t in enumerate(hyp.tokens) if t == separator), default=0)
            hyp = Hypothesis(hyp.tokens[:keep], hyp.frames[:keep])
        return hyp


__all__ = [
    "BeamOptions",
    "BeamSearchDecoder",
    "check_letter_lm",
    "lexicon_from_arpa",
    "read_lexicon",
]
