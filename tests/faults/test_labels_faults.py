"""Issue 28 item 11: `labels valid.tsv --letters` after training must not rewrite the
`dict.ltr.txt` a fine-tuning run depends on, and a resume with changed transcripts is refused as
one with changed audio (the batches would carry other targets)."""

from __future__ import annotations

import pytest
from helpers import make_letter_corpus

from w2vkit import cli
from w2vkit.config import ConfigError
from w2vkit.data.manifest import read_manifest
from w2vkit.data.vocab import Vocabulary
from w2vkit.finetune.labels import LabelledDataset, build_labelled_loader


def _table(corpus, split, edit=lambda text: text):
    manifest = read_manifest(corpus / f"{split}.tsv")
    words = (corpus / f"{split}.wrd").read_text().splitlines()
    rows = [f"{p}\t{edit(w)}\n" for p, w in zip(manifest.paths, words, strict=True)]
    (corpus / f"{split}.txt.tsv").write_text("".join(rows))
    return corpus / f"{split}.txt.tsv"


def test_labels_for_one_split_keep_the_dictionary_of_all(tmp_path, capsys):
    corpus = make_letter_corpus(tmp_path / "c", {"train": 6, "valid": 2})
    both = corpus / "both.tsv"
    both.write_text(_table(corpus, "train").read_text() + _table(corpus, "valid").read_text())
    train, valid = str(corpus / "train.tsv"), str(corpus / "valid.tsv")
    assert cli.main(["labels", train, valid, "--transcripts", str(both)]) == 0
    dictionary = (corpus / "dict.ltr.txt").read_bytes()
    assert cli.main(["labels", valid, "--transcripts", str(_table(corpus, "valid"))]) == 0
    assert "dict.ltr.txt: kept (it holds every symbol of these labels)" in capsys.readouterr().out
    assert (corpus / "dict.ltr.txt").read_bytes() == dictionary  # the run's vocabulary holds

    valid_ltr = (corpus / "valid.ltr").read_bytes()
    new_symbol = _table(corpus, "valid", edit=lambda text: text + " ZOË")
    assert cli.main(["labels", valid, "--transcripts", str(new_symbol)]) == 2
    assert capsys.readouterr().err == (
        f"w2vkit labels: {corpus / 'dict.ltr.txt'} exists without the symbols O Z Ë of these "
        "labels, and a fine-tuning run may depend on its symbols: give every split at once "
        "(w2vkit labels train.tsv valid.tsv --letters), write elsewhere with --dest, or delete "
        "it first\n"
    )
    assert (corpus / "dict.ltr.txt").read_bytes() == dictionary
    assert (corpus / "valid.ltr").read_bytes() == valid_ltr  # nothing half-written


def test_a_resume_on_changed_transcripts_is_refused(tmp_path):
    corpus = make_letter_corpus(tmp_path / "c", {"train": 6})
    vocab = Vocabulary.load(corpus / "dict.ltr.txt")

    def loader():
        dataset = LabelledDataset(corpus / "train.tsv", vocab)
        return build_labelled_loader(
            dataset, max_batch_samples=10**7, max_batch_size=2, required_batch_size_multiple=1,
            seed=0, rank=0, world_size=1, shuffle=True,
        )  # fmt: skip

    state = loader().sampler.state_dict()
    state["position"] = 1  # mid-epoch
    lines = (corpus / "train.ltr").read_text().splitlines()
    (corpus / "train.ltr").write_text("".join(" ".join(reversed(x.split())) + "\n" for x in lines))
    with pytest.raises(ConfigError, match="^the data changed since the checkpoint"):
        loader().sampler.load_state_dict(state)


def test_latin1_transcripts_are_refused_not_turned_into_caf(tmp_path, capsys):
    corpus = make_letter_corpus(tmp_path / "c", {"train": 2})
    manifest = read_manifest(corpus / "train.tsv")
    table = corpus / "latin1.tsv"
    table.write_bytes("".join(f"{p}\tcafé\n" for p in manifest.paths).encode("latin-1"))
    assert cli.main(["labels", str(corpus / "train.tsv"), "--transcripts", str(table)]) == 2
    assert capsys.readouterr().err == (
        f"w2vkit labels: {table}:1: not UTF-8 text (byte 0xe9): re-save it as UTF-8 (e.g. iconv "
        "-f latin1 -t utf-8)\n"
    )
    beside = (manifest.root / manifest.paths[0]).with_suffix(".txt")
    beside.write_bytes("caf\xe9\n".encode("latin-1"))
    (manifest.root / manifest.paths[1]).with_suffix(".txt").write_text("tea\n")
    assert (
        cli.main(["labels", str(corpus / "train.tsv"), "--letters", "--dest", str(tmp_path)]) == 2
    )
    assert capsys.readouterr().err.startswith(
        f"w2vkit labels: {beside}:1: not UTF-8 text (byte 0xe9)"
    )
