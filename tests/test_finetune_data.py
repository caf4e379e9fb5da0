"""Labelled data: vocabulary (fairseq Dictionary layout), .ltr/.tsv alignment, padded batches.

`make_letter_corpus` (shared with the other fine-tuning tests) writes audio in which every letter
is a tone of its own pitch, so that a tiny model learns to transcribe it in a few hundred updates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from w2vkit.config import ConfigError
from w2vkit.data.manifest import Manifest, write_manifest
from w2vkit.finetune.labels import LabelledDataset, build_labelled_loader
from w2vkit.finetune.vocab import BLANK, PAD, UNK, Vocabulary, letters_from_words

LETTERS = "ABCDE"
WORDS = ["BAD", "CAB", "DEAD", "BEAD", "ACE", "BED", "DAB", "CEDE"]
LETTER_SEC = 0.08  # 4 frames per letter
GAP_SEC = 0.06  # silence between words


def letter_wav(text: str, rng: np.random.Generator, sample_rate: int = 16000) -> np.ndarray:
    """Each letter a tone (A 300 Hz ... E 1500 Hz), words separated by silence, a little noise."""
    pieces = [np.zeros(int(GAP_SEC * sample_rate), np.float32)]
    for word in text.split():
        for letter in word:
            t = np.arange(int(LETTER_SEC * sample_rate)) / sample_rate
            freq = 300.0 * (1 + LETTERS.index(letter)) * rng.uniform(0.97, 1.03)
            pieces.append((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32))
        pieces.append(np.zeros(int(GAP_SEC * sample_rate), np.float32))
    wav = np.concatenate(pieces)
    return wav + 0.01 * rng.standard_normal(len(wav)).astype(np.float32)


def make_letter_corpus(directory: Path, splits: dict[str, int], seed: int = 0) -> Path:
    """Write <split>.tsv/.ltr/.wrd and dict.ltr.txt for `splits` ({name: utterances})."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for split, num in splits.items():
        paths, frames, words = [], [], []
        for i in range(num):
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
            wav = letter_wav(text, rng)
            path = f"audio/{split}/{i:03d}.wav"
            (directory / path).parent.mkdir(parents=True, exist_ok=True)
            sf.write(directory / path, wav, 16000, subtype="PCM_16")
            paths.append(path)
            frames.append(len(wav))
            words.append(text)
        write_manifest(directory / f"{split}.tsv", Manifest(directory, paths, np.array(frames)))
        ltr = [letters_from_words(w) for w in words]
        (directory / f"{split}.ltr").write_text("".join(f"{line}\n" for line in ltr))
        (directory / f"{split}.wrd").write_text("".join(f"{w}\n" for w in words))
        for line in ltr:
            for symbol in line.split():
                counts[symbol] = counts.get(symbol, 0) + 1
    order = sorted(counts, key=lambda s: (-counts[s], s))  # fairseq: by descending count
    (directory / "dict.ltr.txt").write_text("".join(f"{s} {counts[s]}\n" for s in order))
    return directory


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
