"""Phoneme tokenizer: eSpeak NG g2p to ids, a JSON vocabulary that reloads, clear id errors."""

from __future__ import annotations

import json
import re

import pytest
import torch

from w2vkit.data.phonemes import (
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    WORD_BOUNDARY,
    WORD_BOUNDARY_ID,
    PhonemeTokenizer,
)
from w2vkit.data.synth import phonemize
from w2vkit.embed.layers import TokenEmbedding

pytest.importorskip("espeakng_loader")

LYRICS = ["Hello world, seven green birds.", "The quick brown fox jumps over the lazy dog!"]


def test_g2p_gives_ipa_words():
    assert phonemize("Hello world.") == [["h", "ə", "l", "əʊ"], ["w", "ɜː", "l", "d"]]
    assert phonemize("Hello world.", stress=True) == [
        ["h", "ə", "l", "ˈəʊ"],
        ["w", "ˈɜː", "l", "d"],
    ]
    assert phonemize("Hello?!", voice="en-us")[0][-1] == "oʊ"  # the voice's own rules
    assert phonemize("...") == []


def test_encode_decode_round_trip():
    tokenizer = PhonemeTokenizer.fit(LYRICS)
    assert tokenizer.tokens[:3] == SPECIAL_TOKENS == ("<pad>", "<unk>", "|")
    assert list(tokenizer.tokens[3:]) == sorted(tokenizer.tokens[3:])
    ids = tokenizer.encode("hello world")
    assert tokenizer.decode(ids) == ["h", "ə", "l", "əʊ", "|", "w", "ɜː", "l", "d", "|"]
    assert ids[4] == WORD_BOUNDARY_ID and PAD_ID not in ids and UNK_ID not in ids
    for text in LYRICS:
        assert tokenizer.decode(tokenizer.encode(text)) == tokenizer.phonemes(text)
        assert tokenizer.phonemes(text).count(WORD_BOUNDARY) == len(text.split())


def test_unseen_phoneme_is_unknown():
    tokenizer = PhonemeTokenizer.fit(["a bee"])  # no /ʃ/ in it
    decoded = tokenizer.decode(tokenizer.encode("she"))
    assert decoded == ["<unk>", "iː", "|"]


def test_saved_vocabulary_reloads_with_the_same_ids(tmp_path):
    tokenizer = PhonemeTokenizer.fit(LYRICS, voice="en-us", stress=True)
    tokenizer.save(tmp_path / "vocab.json")
    loaded = PhonemeTokenizer.load(tmp_path / "vocab.json")
    assert loaded == tokenizer and loaded.voice == "en-us" and loaded.stress
    assert loaded.encode(LYRICS[1]) == tokenizer.encode(LYRICS[1])
    assert json.loads((tmp_path / "vocab.json").read_text("utf-8"))["tokens"][3:5] == list(
        tokenizer.tokens[3:5]
    )


def test_ids_outside_the_table_name_the_id_and_the_size():
    tokenizer = PhonemeTokenizer.fit(LYRICS)
    size = len(tokenizer)
    message = (
        f"token id {size} at index (2,) is outside the table of {size} tokens: ids must lie in "
        f"[0, {size}); id {size} needs at least {size + 1} rows"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        tokenizer.decode([3, 4, size])
    # An embedding table sized from the vocabulary takes every id the tokenizer makes ...
    embedding = TokenEmbedding(len(tokenizer), 4, padding_id=PAD_ID)
    assert embedding(torch.tensor([tokenizer.encode(LYRICS[0])])).shape[-1] == 4
    # ... and one row short fails with the same message.
    short = TokenEmbedding(size - 1, 4)
    with pytest.raises(ValueError, match=re.escape(f"table of {size - 1} tokens")):
        short(torch.tensor([[size - 1]]))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not JSON"),
        ('{"format": "other"}', "not a w2vkit phoneme vocabulary"),
        (
            '{"format": "w2vkit-phoneme-vocabulary", "version": 9, "tokens": []}',
            "vocabulary version 9, this w2vkit reads version 1",
        ),
        (
            '{"format": "w2vkit-phoneme-vocabulary", "version": 1, "voice": "en", '
            '"stress": false, "tokens": ["a", "b"]}',
            "must start with ['<pad>', '<unk>', '|']",
        ),
        (
            '{"format": "w2vkit-phoneme-vocabulary", "version": 1, "voice": "en", '
            '"stress": false, "tokens": ["<pad>", "<unk>", "|", "a", "a"]}',
            "holds a token twice",
        ),
    ],
)
def test_bad_vocabulary_files_are_named(tmp_path, content, message):
    (tmp_path / "v.json").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        PhonemeTokenizer.load(tmp_path / "v.json")
    assert "v.json" in str(info.value)
