"""Issue 28 items 8, 9 and 14: text inputs in other encodings, damaged or crafted ARPA models, and
`lm build` fed a manifest or audio. Each is one line on stderr and exit 2, never a traceback, an
exhausted machine or a quietly wrong model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from helpers import make_letter_corpus

from w2vkit import cli
from w2vkit.config import ConfigError
from w2vkit.data.text import read_transcript_table
from w2vkit.data.vocab import Vocabulary
from w2vkit.finetune.beam import BeamOptions, BeamSearchDecoder, lexicon_from_arpa, read_lexicon
from w2vkit.finetune.labels import LabelledDataset, read_labels
from w2vkit.finetune.ngram import KneserNeyModel, read_arpa_unigrams
from w2vkit.model.config import BASE_CONV_LAYERS
from w2vkit.model.feature_extractor import output_lengths

SENTENCES = [["THE", "CAT"], ["A", "DOG"], ["THE", "DOG", "RAN"]] * 3


def _fails(argv, capsys) -> str:
    """Run the CLI; it must exit 2 with exactly one stderr line. Returns that line."""
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def arpa(tmp_path):
    path = tmp_path / "w.arpa"
    KneserNeyModel(SENTENCES, 3).write_arpa(path)
    return path


# --- item 8: encodings -------------------------------------------------------------------------


def test_latin1_files_name_the_line_and_byte(tmp_path):
    latin = tmp_path / "dict.ltr.txt"
    latin.write_bytes("| 4\nA 3\n\xe9 1\n".encode("latin-1"))
    message = "not UTF-8 text (byte 0xe9): re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    with pytest.raises(
        ConfigError, match=f"^{latin}:3: {message.replace('(', '.').replace(')', '.')}$"
    ):
        Vocabulary.load(latin)
    lexicon = tmp_path / "lex.txt"
    lexicon.write_bytes("CAFE C A F E |\nCAF\xc9 C A F \xc9 |\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"^{lexicon}:2: not UTF-8 text .byte 0xc9."):
        read_lexicon(lexicon)
    manifest_dir = make_letter_corpus(tmp_path / "c", {"train": 2})
    (manifest_dir / "train.ltr").write_bytes("C A F \xc9 |\nA |\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"^{manifest_dir / 'train.ltr'}:1: not UTF-8 text"):
        read_labels(manifest_dir / "train.ltr", manifest_path=manifest_dir / "train.tsv")


def test_latin1_transcript_table_is_refused_not_read_as_caf(tmp_path):
    table = tmp_path / "t.tsv"
    table.write_bytes("a.wav\tcaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"^{table}:1: not UTF-8 text .byte 0xe9.: re-save it"):
        read_transcript_table(table)


def test_a_byte_order_mark_keeps_the_word_boundary(tmp_path):
    path = tmp_path / "dict.ltr.txt"
    path.write_bytes(b"\xef\xbb\xbf| 5\nA 3\n")
    vocab = Vocabulary.load(path)
    assert vocab.symbols[4:] == ["|", "A"] and vocab.separator == 4
    table = tmp_path / "t.tsv"
    table.write_bytes(b"\xef\xbb\xbfa.wav\thi\n")
    assert read_transcript_table(table) == {"a.wav": ("hi", 1)}


# --- item 9: ARPA models -----------------------------------------------------------------------


def test_a_valid_arpa_passes_and_lists_its_unigrams(arpa):
    assert sorted(read_arpa_unigrams(arpa)) == [
        "</s>",
        "<s>",
        "<unk>",
        "A",
        "CAT",
        "DOG",
        "RAN",
        "THE",
    ]


def _edit(arpa, old: str, new: str):
    text = arpa.read_text()
    assert old in text
    arpa.write_text(text.replace(old, new, 1))
    return arpa


def test_truncated_arpa(arpa):
    arpa.write_text(arpa.read_text()[: len(arpa.read_text()) // 2])
    with pytest.raises(ConfigError, match="file has .*: a truncated or edited file; rebuild it$"):
        lexicon_from_arpa(arpa)


def test_arpa_without_end(arpa):
    _edit(arpa, "\\end\\", "")
    with pytest.raises(ConfigError, match=f"^{arpa}: no .end. line: a truncated file; rebuild it$"):
        read_arpa_unigrams(arpa)


def test_nan_probability(arpa):
    text = arpa.read_text().splitlines()
    line = next(i for i, t in enumerate(text, 1) if t.split("\t")[1:2] == ["CAT"])
    text[line - 1] = "nan\tCAT"
    arpa.write_text("\n".join(text) + "\n")
    with pytest.raises(
        ConfigError, match=f"^{arpa}:{line}: 'nan' is not a finite log10 probability$"
    ):
        read_arpa_unigrams(arpa)


def test_a_huge_declared_count_is_refused_before_kenlm_reserves_it(arpa):
    _edit(arpa, "ngram 1=8", "ngram 1=9999999999")
    with pytest.raises(
        ConfigError,
        match=f"^{arpa}: the header declares 9999999999 1-grams, the file has 8: a truncated",
    ):
        BeamSearchDecoder(
            Vocabulary(list("ACDEGHNORTU|")), arpa, lexicon=None, options=BeamOptions()
        )


def test_unigram_only_and_order_above_six(tmp_path, arpa):
    text = arpa.read_text()
    unigram = tmp_path / "u.arpa"
    head, body = text.split("\\1-grams:")
    unigram.write_text(
        "\n\\data\\\nngram 1=8\n\n\\1-grams:" + body.split("\\2-grams:")[0] + "\\end\\\n"
    )
    with pytest.raises(ConfigError, match=f"^{unigram}: a unigram model: KenLM needs order 2"):
        read_arpa_unigrams(unigram)
    seven = tmp_path / "7.arpa"
    seven.write_text("\\data\\\n" + "".join(f"ngram {n}=1\n" for n in range(1, 8)))
    with pytest.raises(ConfigError, match=f"^{seven}:8: order 7: KenLM .as built in flashlight"):
        read_arpa_unigrams(seven)


def test_lm_build_order_above_six_is_refused(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the cat\na dog\n")
    line = _fails(["lm", "build", text, "--order", "100", "-o", tmp_path / "w.arpa"], capsys)
    assert line == (
        f"w2vkit lm: {text}: order must be 2 to 6 (KenLM reads bigram models up to order 6), "
        "got 100"
    )
    assert not (tmp_path / "w.arpa").exists()


# --- item 14: lm build takes anything ----------------------------------------------------------


def test_lm_build_refuses_a_manifest_and_an_audio_file(tmp_path, capsys):
    corpus = make_letter_corpus(tmp_path / "c", {"train": 2})
    line = _fails(["lm", "build", corpus / "train.tsv", "-o", tmp_path / "w.arpa"], capsys)
    assert line == (
        f"w2vkit lm: {corpus / 'train.tsv'}:2: a tab-separated row (a manifest or transcript "
        "table?): an LM is built from one sentence per line, such as the train.wrd that w2vkit "
        "labels writes"
    )
    wav = tmp_path / "Noise.wav"
    sf.write(wav, np.random.default_rng(0).normal(0, 0.1, 1600), 16000)
    line = _fails(["lm", "build", wav, "-o", tmp_path / "w.arpa"], capsys)
    assert line == (
        f"w2vkit lm: {wav} is binary, not text (audio?): give one sentence per line, such as "
        "the train.wrd that w2vkit labels writes"
    )
    assert not (tmp_path / "w.arpa").exists()
    shutil.rmtree(corpus)


# --- item 8: labels the dictionary or the audio cannot carry ------------------------------------


def test_a_dictionary_without_word_boundary_is_refused(tmp_path):
    corpus = make_letter_corpus(tmp_path / "c", {"train": 3})
    symbols = [line for line in (corpus / "dict.ltr.txt").read_text().splitlines()]
    (corpus / "dict.ltr.txt").write_text("".join(f"{s}\n" for s in symbols if s[0] != "|"))
    with pytest.raises(ConfigError) as err:
        LabelledDataset(corpus / "train.tsv", Vocabulary.load(corpus / "dict.ltr.txt"))
    assert str(err.value) == (
        f"{corpus / 'train.ltr'} has word boundaries '|' but the dictionary has none: every word "
        "boundary would train as <unk>; rewrite dict.ltr.txt with w2vkit labels"
    )


def test_a_transcript_ctc_cannot_align_is_counted_and_named(tmp_path, caplog):
    corpus = make_letter_corpus(tmp_path / "c", {"train": 3})
    lines = (corpus / "train.ltr").read_text().splitlines()
    lines[1] = " ".join("A B |".split() * 5000)  # 15,000 letters for about a second of audio
    (corpus / "train.ltr").write_text("\n".join(lines) + "\n")
    vocab = Vocabulary.load(corpus / "dict.ltr.txt")
    dataset = LabelledDataset(corpus / "train.tsv", vocab, conv_layers=BASE_CONV_LAYERS)
    assert dataset.num_infeasible == 1
    assert (
        f"{corpus / 'train.ltr'}: 1 of 3 transcripts need more frames than their audio has (CTC "
        "emits at most one letter per frame), so they add no loss: lines 2"
    ) in caplog.text
    # The reference: CTC's loss of that row is infinite (zeroed by zero_infinity), the others not.
    frames = output_lengths(torch.as_tensor(dataset.audio.num_samples), BASE_CONV_LAYERS)
    losses = [
        F.ctc_loss(
            torch.zeros(int(n), 1, len(vocab)).log_softmax(-1), t[None], n[None], torch.tensor([len(t)]),
            reduction="sum",
        )
        for t, n in zip(dataset.targets, frames, strict=True)
    ]  # fmt: skip
    assert [bool(torch.isinf(x)) for x in losses] == [False, True, False]
