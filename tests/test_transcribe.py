"""`w2vkit transcribe`: batched, length-sorted decoding equals one-by-one decoding, input order is
kept, the three output formats, manifests, HF directories, LM beam search, usage errors."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_letter_corpus

from w2vkit import cli
from w2vkit.config import from_dict, to_dict
from w2vkit.data.audio import load_audio
from w2vkit.data.manifest import read_manifest
from w2vkit.data.vocab import Vocabulary
from w2vkit.finetune.decode import greedy_decode, word_times
from w2vkit.interop import hf_ctc, read_model
from w2vkit.model.config import ModelConfig, tiny
from w2vkit.model.ctc import Wav2Vec2ForCTC
from w2vkit.train import checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("transcribe")
    corpus = make_letter_corpus(root / "data", {"test": 5}, seed=3)
    vocab = Vocabulary.load(corpus / "dict.ltr.txt")
    # Layer-norm extractor: padding cannot change a row's frames, so batching is exact.
    cfg = from_dict(
        ModelConfig, {"feature_extractor": {"norm_mode": "layer_norm"}}, base=tiny(), where="model"
    )
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(cfg, len(vocab))
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # varied argmax paths instead of one symbol everywhere
    config = {"model": to_dict(cfg), "vocab": vocab.symbols, "data": {"normalize": False}}
    checkpoint.save_atomic({"model": model.state_dict(), "config": config}, root / "model.pt")
    return root, corpus, vocab, model.eval()


def _expected(model, vocab, path):
    wav = torch.from_numpy(load_audio(path))[None]
    with torch.no_grad():
        out = model(wav)
    return greedy_decode(out.logits)[0]


def test_batched_transcription_equals_one_by_one_in_input_order(setup, tmp_path, capsys):
    root, corpus, vocab, model = setup
    manifest = read_manifest(corpus / "test.tsv")
    files = [str(manifest.root / p) for p in manifest.paths][::-1]
    expected = [vocab.text(_expected(model, vocab, f).tokens) for f in files]
    assert len(set(expected)) > 1  # the outputs differ, so a mix-up would show
    for seconds in ("0.5", "100"):  # one file per batch; all in one padded batch
        assert (
            cli.main(["transcribe", str(root / "model.pt"), *files, "--batch-seconds", seconds])
            == 0
        )
        assert capsys.readouterr().out.splitlines() == expected


def test_jsonl_has_word_times_and_tsv_follows_the_manifest(setup, capsys):
    root, corpus, vocab, model = setup
    manifest = read_manifest(corpus / "test.tsv")
    first = str(manifest.root / manifest.paths[0])
    assert cli.main(["transcribe", str(root / "model.pt"), first, "--format", "jsonl"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    hyp = _expected(model, vocab, first)
    assert record == {
        "path": first,
        "text": vocab.text(hyp.tokens),
        "words": word_times(hyp, vocab, 0.02),
    }
    assert (
        cli.main(
            [
                "transcribe",
                str(root / "model.pt"),
                "--manifest",
                str(corpus / "test.tsv"),
                "--format",
                "tsv",
            ]
        )
        == 0
    )
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [r[0] for r in rows] == manifest.paths
    assert rows[0][1] == record["text"]


def test_hf_directory_transcribes_the_same(setup, tmp_path, capsys):
    root, corpus, vocab, model = setup
    hf_ctc.save_hf_ctc(read_model(root / "model.pt"), tmp_path / "hf")
    args = ["--manifest", str(corpus / "test.tsv")]
    assert cli.main(["transcribe", str(root / "model.pt"), *args]) == 0
    ours = capsys.readouterr().out
    assert cli.main(["transcribe", str(tmp_path / "hf"), *args]) == 0
    assert capsys.readouterr().out == ours


def test_lm_beam_search_runs_from_the_command_line(setup, tmp_path, capsys):
    pytest.importorskip("flashlight.lib.text")
    root, corpus, vocab, model = setup
    assert (
        cli.main(
            [
                "lm",
                "build",
                str(corpus / "test.wrd"),
                "--order",
                "2",
                "-o",
                str(tmp_path / "w.arpa"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    args = [
        "transcribe",
        str(root / "model.pt"),
        "--manifest",
        str(corpus / "test.tsv"),
        "--lm",
        str(tmp_path / "w.arpa"),
    ]
    assert cli.main([*args, "--lm-weight", "5", "--word-score", "2"]) == 0
    words = set((corpus / "test.wrd").read_text().split())
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and all(
        set(line.split()) <= words for line in lines
    )  # lexicon words only


def test_usage_errors(setup, tmp_path, capsys):
    root, corpus, _, _ = setup
    assert cli.main(["transcribe", str(root / "model.pt")]) == 2
    assert "nothing to transcribe" in capsys.readouterr().err
    assert cli.main(["transcribe", str(root / "model.pt"), str(tmp_path / "nope.wav")]) == 2
    assert "no such audio file" in capsys.readouterr().err
    assert cli.main(["transcribe", str(root / "model.pt"), str(tmp_path)]) == 2
    assert f"{tmp_path} is a folder: give audio files, or a manifest of the folder" in (
        capsys.readouterr().err
    )
    assert (
        cli.main(
            [
                "transcribe",
                str(root / "model.pt"),
                "--manifest",
                str(corpus / "test.tsv"),
                "--lexicon-free",
            ]
        )
        == 2
    )
    assert "need --lm" in capsys.readouterr().err
