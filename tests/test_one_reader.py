"""One reader for every checkpoint kind: a fine-tuned w2vkit checkpoint loads wherever a model is
taken (`load_model`, `extract`, `convert` both ways), and heads are a registry that another
objective extends without touching the readers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import make_letter_corpus

import w2vkit
from w2vkit import cli
from w2vkit.config import ConfigError, to_dict
from w2vkit.data.vocab import Vocabulary
from w2vkit.features.store import load_features
from w2vkit.interop import HEADS, CheckpointError, build, read_model, register_head
from w2vkit.model.config import tiny
from w2vkit.model.ctc import Wav2Vec2ForCTC
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.train import checkpoint


def _save_finetuned(path, cfg, vocab: Vocabulary, seed: int = 0) -> Wav2Vec2ForCTC:
    """A checkpoint in the layout `w2vkit finetune` writes (config sections + the vocabulary)."""
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(cfg, len(vocab), final_dropout_prob=0.1)
    config = {
        "model": to_dict(cfg),
        "vocab": vocab.symbols,
        "data": {"normalize": False},
        "ctc": {"final_dropout_prob": 0.1},
    }
    checkpoint.save_atomic({"model": model.state_dict(), "config": config}, path)
    return model.eval()


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    corpus = make_letter_corpus(root / "data", {"test": 3}, seed=1)
    vocab = Vocabulary.load(corpus / "dict.ltr.txt")
    model = _save_finetuned(root / "checkpoint_last.pt", tiny(), vocab)
    return root, corpus, vocab, model


def _wav(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 8000, generator=torch.Generator().manual_seed(seed))


def test_load_model_gives_the_fine_tuned_model_and_its_encoder(finetuned):
    root, _, vocab, model = finetuned
    loaded = w2vkit.load_model(root / "checkpoint_last.pt")
    assert isinstance(loaded, Wav2Vec2ForCTC) and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(_wav()).logits, model(_wav()).logits, rtol=0, atol=0)
        encoder = w2vkit.load_model(root / "checkpoint_last.pt", head="encoder")
        assert isinstance(encoder, Wav2Vec2Model) and encoder.quantizer is None
        expected = model.wav2vec2.extract_features(_wav()).hidden_states
        got = encoder.extract_features(_wav()).hidden_states
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    record = read_model(root / "checkpoint_last.pt")
    assert record.kind == "ctc" and record.vocab == vocab and record.final_dropout_prob == 0.1
    assert loaded.wav2vec2.normalize_input is False  # what the run recorded (data.normalize)
    states = w2vkit.embed_file(loaded, _wav()[0].numpy(), 16000, layer=2)
    np.testing.assert_array_equal(states, expected[2][0].numpy())


def test_extract_reads_a_fine_tuned_checkpoint(finetuned, tmp_path):
    root, corpus, _, model = finetuned
    manifest = corpus / "test.tsv"
    out = tmp_path / "feats"
    args = [str(root / "checkpoint_last.pt"), str(manifest), "--out", str(out), "--quiet"]
    assert cli.main(["extract", *args, "--layers", "2", "--device", "cpu"]) == 0
    stored = load_features(out, layer=2)
    root_dir, row = manifest.read_text().splitlines()[:2]  # header: the audio root
    first = row.split("\t")[0]
    wav, _ = sf.read(f"{root_dir}/{first}")
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(wav, dtype=np.float32))[None]
        expected = model.wav2vec2.extract_features(x).hidden_states[2][0]
    torch.testing.assert_close(stored[first].float(), expected, rtol=0, atol=1e-5)


def test_convert_round_trips_a_fine_tuned_checkpoint(finetuned, tmp_path, capsys):
    root, _, vocab, model = finetuned
    source = str(root / "checkpoint_last.pt")
    assert cli.main(["convert", source, str(tmp_path / "w.pt"), "--to", "w2vkit"]) == 0
    hf_args = ["--to", "hf", "--hf-class", "ctc"]
    assert cli.main(["convert", source, str(tmp_path / "hf"), *hf_args]) == 0
    assert f"HF Wav2Vec2ForCTC, {len(vocab)} symbols" in capsys.readouterr().out
    for path in (tmp_path / "w.pt", tmp_path / "hf"):
        record = read_model(path)
        assert record.kind == "ctc" and record.vocab == vocab
        with torch.no_grad():
            got = build(record).eval()(_wav(1)).logits
            torch.testing.assert_close(got, model(_wav(1)).logits, rtol=0, atol=1e-5)


def test_spectrogram_front_end_has_no_hf_class_in_one_line(tmp_path, capsys):
    cfg = tiny()
    cfg = replace(cfg, feature_extractor=replace(cfg.feature_extractor, kind="spectrogram"))
    _save_finetuned(tmp_path / "ft.pt", cfg, Vocabulary(["A", "B", "|"]))
    args = ["convert", str(tmp_path / "ft.pt"), str(tmp_path / "hf"), "--to", "hf"]
    assert cli.main([*args, "--hf-class", "ctc"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "model.feature_extractor.kind='spectrogram' cannot be exported to HF transformers" in err
    assert "missing" not in err and not (tmp_path / "hf").exists()


def test_a_head_is_a_registry_entry(finetuned):
    root, _, vocab, _ = finetuned
    record = read_model(root / "checkpoint_last.pt")

    class Probe(torch.nn.Module):
        def __init__(self, encoder: Wav2Vec2Model, classes: int) -> None:
            super().__init__()
            self.encoder, self.out = (
                encoder,
                torch.nn.Linear(encoder.cfg.transformer.model_dim, classes),
            )

    def probe(record, source):
        return Probe(build(record, "encoder", source=source), 3)

    register_head("toy_probe", probe)
    try:
        built = build(record, "toy_probe")
        assert isinstance(built, Probe) and built.out.out_features == 3
        with pytest.raises(ValueError, match="head 'toy_probe' is registered already"):
            register_head("toy_probe", lambda record, source: probe(record, source))
    finally:
        del HEADS["toy_probe"]
    with pytest.raises(ConfigError, match="no model head 'nope'; heads: ctc, encoder, pretraining"):
        build(record, "nope")


def test_ctc_head_refuses_a_pretrained_model(tmp_path):
    from helpers import save_random_tiny

    save_random_tiny(tmp_path / "pre.pt")
    with pytest.raises(ConfigError, match="pre.pt: not a fine-tuned CTC model"):
        w2vkit.load_model(tmp_path / "pre.pt", head="ctc")
    assert isinstance(w2vkit.load_model(tmp_path / "pre.pt"), Wav2Vec2Model)


def test_hf_ctc_without_its_tokenizer_reads_as_an_encoder(finetuned, tmp_path):
    root, _, _, model = finetuned
    assert (
        cli.main(
            [
                "convert",
                str(root / "checkpoint_last.pt"),
                str(tmp_path / "hf"),
                "--to",
                "hf",
                "--hf-class",
                "ctc",
            ]
        )
        == 0
    )
    (tmp_path / "hf" / "vocab.json").unlink()
    record = read_model(tmp_path / "hf")
    assert record.kind == "pretraining" and record.vocab is None
    with torch.no_grad():
        got = build(record, "encoder").eval().extract_features(_wav()).context
        torch.testing.assert_close(
            got, model.wav2vec2.extract_features(_wav()).context, rtol=0, atol=1e-5
        )
    with pytest.raises(ConfigError, match="not a fine-tuned CTC model"):
        build(record, "ctc")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.__setitem__("vocab", ["A", "B"]), "config.vocab must list the symbols after"),
        (lambda c: c.__setitem__("vocab", [*c["vocab"], 7]), "config.vocab must list the symbols"),
        (
            lambda c: c.__setitem__("vocab", [*c["vocab"], "A"]),
            "config.vocab: the vocabulary has a duplicate",
        ),
        (lambda c: c.__setitem__("vocab", c["vocab"][:-1]), "lm_head.weight is shape"),
        (
            lambda c: c.__setitem__("ctc", {"final_dropout_prob": "x"}),
            "config.ctc.final_dropout_prob='x'",
        ),
        (
            lambda c: c.__setitem__("ctc", {"final_dropout_prob": 2}),
            "final_dropout_prob=2 not in [0, 1)",
        ),
    ],
)
def test_a_damaged_fine_tuning_checkpoint_is_one_line(finetuned, tmp_path, change, message):
    root, _, _, _ = finetuned
    payload = torch.load(root / "checkpoint_last.pt", weights_only=True)
    change(payload["config"])
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as raised:
        read_model(tmp_path / "bad.pt")
    assert "\n" not in str(raised.value) and message in str(raised.value)
    assert str(raised.value).startswith(str(tmp_path / "bad.pt"))
