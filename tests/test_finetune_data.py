"""Labelled data: vocabulary (fairseq Dictionary layout), .ltr/.tsv alignment, padded batches.

`make_letter_corpus` (shared with the other fine-tuning tests) writes audio in which every letter
is a tone of its own pitch, so that a tiny model learns to transcribe it in a few hundred updates.
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_letter_corpus

from w2vkit.config import ConfigError
from w2vkit.data.vocab import BLANK, PAD, UNK, Vocabulary, letters_from_words
from w2vkit.finetune.labels import LabelledDataset, build_labelled_loader


def test_vocabulary_has_fairseq_layout_and_round_trips(tmp_path):
    (tmp_path / "dict.ltr.txt").write_text("| 10\nE 7\nT 3 #fairseq:overwrite\n")
    vocab = Vocabulary.load(tmp_path / "dict.ltr.txt")
    assert vocab.symbols == ["<s>", "<pad>", "</s>", "<unk>", "|", "E", "T"]
    assert (BLANK, PAD, UNK) == (vocab.index["<s>"], vocab.index["<pad>"], vocab.index["<unk>"])
    assert vocab.encode("T E E | X |") == [6, 5, 5, 4, UNK, 4]
    assert vocab.text(vocab.encode("T E E | T E |")) == "TEE TE"
    vocab.save(tmp_path / "copy.txt")
    again = Vocabulary.load(tmp_path / "copy.txt")
    assert again == vocab and again.counts == [10, 7, 3]


def test_dictionary_errors_name_file_and_line(tmp_path):
    path = tmp_path / "dict.ltr.txt"
    path.write_text("A 1\nB\n")
    with pytest.raises(ConfigError, match=r"dict.ltr.txt:2: expected 'SYMBOL COUNT'"):
        Vocabulary.load(path)
    path.write_text("A 1\nA 2\n")
    with pytest.raises(ConfigError, match=r"dict.ltr.txt:2: duplicate symbol 'A'"):
        Vocabulary.load(path)


def test_letters_from_words():
    assert letters_from_words("HELLO WORLD") == "H E L L O | W O R L D |"


def test_label_lines_must_match_manifest_rows(tmp_path):
    corpus = make_letter_corpus(tmp_path, {"train": 3})
    lines = (corpus / "train.ltr").read_text().splitlines()
    (corpus / "train.ltr").write_text("\n".join(lines[:2]) + "\n")
    vocab = Vocabulary.load(corpus / "dict.ltr.txt")
    with pytest.raises(ConfigError) as err:
        LabelledDataset(corpus / "train.tsv", vocab)
    assert str(err.value) == (
        f"{corpus / 'train.ltr'} has 2 lines but {corpus / 'train.tsv'} has 3 audio rows: "
        "one transcript line per audio file, in the same order"
    )


def test_batches_hold_whole_utterances_and_their_targets(tmp_path):
    corpus = make_letter_corpus(tmp_path, {"train": 6})
    vocab = Vocabulary.load(corpus / "dict.ltr.txt")
    dataset = LabelledDataset(corpus / "train.tsv", vocab)
    loader = build_labelled_loader(
        dataset,
        max_batch_samples=200_000,
        max_batch_size=3,
        required_batch_size_multiple=1,
        seed=1,
        rank=0,
        world_size=1,
        shuffle=True,
    )
    lines = (corpus / "train.ltr").read_text().splitlines()
    seen = []
    for batch in loader:
        assert batch.targets.shape == (len(batch.indices), int(batch.target_lengths.max()))
        for row, index in enumerate(batch.indices.tolist()):
            n = int(batch.target_lengths[row])
            assert batch.targets[row, :n].tolist() == vocab.encode(lines[index])
            assert (batch.targets[row, n:] == PAD).all()
            length = int(dataset.audio.num_samples[index])  # whole utterance, no crop
            valid = (
                batch.wav.shape[1]
                if batch.padding_mask is None
                else int((~batch.padding_mask[row]).sum())
            )
            assert valid == length
            seen.append(index)
        assert batch.num_audio_samples == sum(
            int(dataset.audio.num_samples[i]) for i in batch.indices
        )
        moved = batch.to("cpu")
        assert torch.equal(moved.targets, batch.targets) and moved.epoch == batch.epoch
    assert sorted(seen) == list(range(6))
