"""n-gram LMs: the Kneser-Ney ARPA builder against KenLM and its own definition; LM beam search
fixing a greedy decoding error, with a word LM + lexicon and with a letter LM (lexicon-free)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from w2vkit import cli
from w2vkit.data.vocab import Vocabulary, letters_from_words
from w2vkit.finetune.beam import BeamOptions, BeamSearchDecoder, lexicon_from_arpa
from w2vkit.finetune.decode import greedy_decode
from w2vkit.finetune.ngram import KneserNeyModel

kenlm = pytest.importorskip("kenlm")
pytest.importorskip("flashlight.lib.text")

WORDS = "the cat sat on a mat dog ran fast".split()


def _sentences(seed: int = 0, num: int = 80) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(WORDS) for _ in range(rng.randint(1, 8))] for _ in range(num)]


@pytest.mark.parametrize("order", [2, 3, 4])
def test_kenlm_scores_the_arpa_file_as_the_model_defines(tmp_path, order):
    sentences = _sentences()
    model = KneserNeyModel(sentences, order)
    model.write_arpa(tmp_path / "lm.arpa")
    loaded = kenlm.Model(str(tmp_path / "lm.arpa"))
    assert loaded.order == order
    for words in sentences[:20] + [["zebra", "the"], ["on"] * 7]:  # seen, unseen, OOV
        assert loaded.score(" ".join(words), bos=True, eos=True) == pytest.approx(
            model.score(words), abs=1e-5
        )


def test_kneser_ney_distributions_sum_to_one():
    model = KneserNeyModel(_sentences(), 3)
    for context in [(), ("the",), ("<s>", "the"), ("cat", "sat"), ("zebra", "zebra")]:
        assert sum(model.prob(w, context) for w in model.vocab) == pytest.approx(1.0, abs=1e-12)


def test_kneser_ney_by_hand_on_a_tiny_corpus():
    # "a b" and "a a": bigram counts <s>a 2, ab 1, b</s> 1, aa 1, a</s> 1; D2 = n1 / (n1 + 2 n2)
    # = 4 / (4 + 2) = 2/3. Unigram continuation counts: a 2 (<s>, a), b 1, </s> 2, D1 = 1/(1+2*2).
    model = KneserNeyModel([["a", "b"], ["a", "a"]], 2)
    d1, d2 = 1 / 5, 2 / 3
    uniform = 1 / 4  # a, b, </s>, <unk>
    p_b = (1 - d1) / 5 + d1 * 3 / 5 * uniform
    gamma_a = d2 * 3 / 3  # three distinct words follow a, three a-bigrams in all
    assert model.prob("b", ("a",)) == pytest.approx((1 - d2) / 3 + gamma_a * p_b)


def test_lm_build_command_writes_words_or_letters(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat\nthe dog ran\n")
    assert cli.main(["lm", "build", str(text), "--order", "3", "-o", str(tmp_path / "w.arpa")]) == 0
    assert kenlm.Model(str(tmp_path / "w.arpa")).order == 3
    assert (
        cli.main(
            ["lm", "build", str(text), "--order", "4", "--letters", "-o", str(tmp_path / "l.arpa")]
        )
        == 0
    )
    letters = KneserNeyModel(
        [letters_from_words(line.upper()).split() for line in text.read_text().splitlines()], 4
    )
    letters.write_arpa(tmp_path / "expected.arpa")
    assert (tmp_path / "l.arpa").read_text() == (tmp_path / "expected.arpa").read_text()
    assert set(lexicon_from_arpa(tmp_path / "l.arpa")) == set("THECASODGRN|")
    assert (
        cli.main(["lm", "build", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "x.arpa")])
        == 2
    )
    assert "missing.txt" in capsys.readouterr().err


VOCAB = Vocabulary(["|", "C", "A", "T", "D", "O", "G"])


def _emissions() -> torch.Tensor:
    """Frames spelling C A T | D O G |, but the last letter's frame prefers C over G."""
    path = ["C", "A", "T", "|", "D", "O", "G", "|"]
    logits = torch.full((len(path), len(VOCAB)), -6.0)
    for t, symbol in enumerate(path):
        logits[t, VOCAB.index[symbol]] = 0.0
    logits[6, VOCAB.index["C"]] = 0.4  # the acoustic mistake: "DOC"
    return logits.log_softmax(-1)


def test_word_lm_with_lexicon_fixes_a_greedy_error(tmp_path):
    KneserNeyModel([["CAT", "DOG"], ["DOG", "CAT"], ["CAT"], ["DOG"]] * 3, 2).write_arpa(
        tmp_path / "w.arpa"
    )
    emissions = _emissions()
    (greedy,) = greedy_decode(emissions[None])
    assert VOCAB.text(greedy.tokens) == "CAT DOC"
    lexicon = lexicon_from_arpa(tmp_path / "w.arpa") | {"DOC": [["D", "O", "C", "|"]]}
    decoder = BeamSearchDecoder(
        VOCAB, tmp_path / "w.arpa", lexicon=lexicon, options=BeamOptions(lm_weight=2.0)
    )
    best = decoder.decode(emissions)
    assert VOCAB.text(best.tokens) == "CAT DOG"
    assert best.frames[VOCAB.letters(best.tokens).split().index("G")] == 6
    # With no LM weight the acoustics win again: the LM, not the search, made the fix.
    plain = BeamSearchDecoder(
        VOCAB, tmp_path / "w.arpa", lexicon=lexicon, options=BeamOptions(lm_weight=0.0)
    )
    assert VOCAB.text(plain.decode(emissions).tokens) == "CAT DOC"


def test_letter_lm_without_lexicon_fixes_a_greedy_error(tmp_path):
    lines = [letters_from_words(s).split() for s in ["CAT DOG", "DOG CAT", "CAT", "DOG", "COT"] * 3]
    KneserNeyModel(lines, 4).write_arpa(tmp_path / "l.arpa")
    decoder = BeamSearchDecoder(
        VOCAB, tmp_path / "l.arpa", lexicon=None, options=BeamOptions(lm_weight=1.5)
    )
    assert VOCAB.text(decoder.decode(_emissions()).tokens) == "CAT DOG"
    assert not math.isnan(float(_emissions().sum()))
