"""Issue 28 items 2, 3, 6 (long files, absurd rates) and 16 for `w2vkit transcribe`.

A transcript must not depend on the other files of its batch (a group-norm model normalises over
the padded row); a bad file or a bad `-o` must not cost the other files' work; a flag the command
cannot honour is refused, not ignored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import make_letter_corpus

from w2vkit import cli
from w2vkit.config import to_dict
from w2vkit.data.audio import load_audio
from w2vkit.data.vocab import Vocabulary
from w2vkit.finetune.ngram import KneserNeyModel
from w2vkit.interop import build, read_model
from w2vkit.model.config import tiny
from w2vkit.model.ctc import Wav2Vec2ForCTC
from w2vkit.model.feature_extractor import output_lengths
from w2vkit.recipes import transcribe
from w2vkit.train import checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A group-norm (BASE-like) tiny CTC model and audio files of 0.3 s to 2 s."""
    root = tmp_path_factory.mktemp("transcribe_faults")
    corpus = make_letter_corpus(root / "data", {"test": 1}, seed=1)
    vocab = Vocabulary.load(corpus / "dict.ltr.txt")
    cfg = tiny()
    assert cfg.feature_extractor.norm_mode == "group_norm"
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(cfg, len(vocab))
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    config = {"model": to_dict(cfg), "vocab": vocab.symbols, "data": {"normalize": False}}
    checkpoint.save_atomic({"model": model.state_dict(), "config": config}, root / "model.pt")
    rng = np.random.default_rng(0)
    files = {}
    for name, seconds in {"short": 0.3, "long1": 2.0, "long2": 1.7}.items():
        files[name] = root / f"{name}.wav"
        sf.write(files[name], rng.normal(0, 0.1, int(seconds * 16000)), 16000, subtype="FLOAT")
    return root, vocab, model.eval(), files


class Recorder:
    """A decoder that keeps the log-probabilities it is given (and decodes nothing)."""

    def __init__(self):
        self.seen = []

    def decode(self, log_probs):
        self.seen.append(log_probs)
        return transcribe.Hypothesis([], [])


def _log_probs(setup, names, max_seconds=30.0):
    root, _, _, files = setup
    finetuned = read_model(root / "model.pt")
    model = build(finetuned, "ctc", source="model.pt").eval()
    conv = finetuned.cfg.feature_extractor.conv_layers
    reader = transcribe._Reader(conv, False, max_seconds)
    recorder = Recorder()
    blocks = [reader.read(i, files[n]) for i, n in enumerate(names)]
    transcribe._decode(model, blocks, torch.device("cpu"), recorder, budget=10**9)
    return dict(zip(names, recorder.seen, strict=True))


def test_a_file_gets_the_same_logits_alone_and_batched_with_longer_files(setup):
    _, _, model, files = setup
    with torch.no_grad():  # the reference: the model on the file alone, no padding at all
        reference = model(torch.from_numpy(load_audio(files["short"]))[None]).logits[0]
    alone = _log_probs(setup, ["short"])["short"]
    batched = _log_probs(setup, ["long1", "short", "long2"])["short"]
    torch.testing.assert_close(alone, reference.log_softmax(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_a_long_file_runs_in_windows_with_the_whole_file_frame_count(setup):
    _, _, model, files = setup
    windowed = _log_probs(setup, ["long1"], max_seconds=0.5)["long1"]
    num_samples = len(load_audio(files["long1"]))
    expected = int(
        output_lengths(torch.tensor(num_samples), model.cfg.feature_extractor.conv_layers)
    )
    assert windowed.shape == (expected, len(setup[1]))


def test_cli_output_of_a_file_does_not_depend_on_its_batch(setup, capsys):
    root, _, _, files = setup
    model = str(root / "model.pt")
    assert cli.main(["transcribe", model, str(files["short"]), "--format", "jsonl"]) == 0
    alone = capsys.readouterr().out
    argv = ["transcribe", model, *(str(files[n]) for n in ("long1", "short", "long2"))]
    assert cli.main([*argv, "--format", "jsonl"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == alone.strip()


def test_an_unusable_output_is_refused_before_any_work(setup, tmp_path, capsys):
    _, _, _, files = setup
    missing_model = tmp_path / "no_model.pt"  # -o is checked first, so this is never read
    out = tmp_path / "no" / "such" / "dir.tsv"
    assert cli.main(["transcribe", str(missing_model), str(files["short"]), "-o", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"w2vkit transcribe: cannot write -o {out}: No such file or directory\n"
    )


def test_an_output_that_is_an_input_is_refused(setup, capsys):
    root, _, _, files = setup
    argv = ["transcribe", str(root / "model.pt"), str(files["short"]), "-o", str(files["short"])]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        f"w2vkit transcribe: -o {files['short']} is one of the inputs: write elsewhere\n"
    )
    assert len(load_audio(files["short"])) == 4800  # untouched


def test_bad_files_are_skipped_and_listed_and_the_good_ones_written(setup, tmp_path, capsys):
    root, _, _, files = setup
    noise = np.random.default_rng(0).normal(0, 0.1, 16000)
    truncated = tmp_path / "truncated.flac"
    sf.write(tmp_path / "whole.flac", noise, 16000)
    truncated.write_bytes((tmp_path / "whole.flac").read_bytes()[:10000])

    tiny_file = tmp_path / "tiny.wav"
    sf.write(tiny_file, np.zeros(100), 16000)
    nan_file = tmp_path / "nan.wav"
    sf.write(nan_file, np.full(8000, np.nan), 16000, subtype="FLOAT")
    one_hz = tmp_path / "one_hz.wav"
    sf.write(one_hz, np.zeros(20000, dtype=np.int16), 1, subtype="PCM_16")
    out = tmp_path / "out.tsv"
    bad = [truncated, tiny_file, nan_file, one_hz]
    argv = [str(root / "model.pt"), str(files["long1"]), *map(str, bad), str(files["short"])]
    assert cli.main(["transcribe", *argv, "--format", "tsv", "-o", str(out)]) == 0
    assert [line.split("\t")[0] for line in out.read_text().splitlines()] == [
        str(files["long1"]),
        str(files["short"]),
    ]
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"w2vkit transcribe: skipped {truncated}: cannot decode: Error : flac decoder lost sync.",
        f"w2vkit transcribe: skipped {tiny_file}: too short: 100 samples at 16 kHz, one frame "
        "needs 400",
        f"w2vkit transcribe: skipped {nan_file}: non-finite samples (8000 NaN/Inf samples)",
        f"w2vkit transcribe: skipped {one_hz}: not readable audio: its header declares 1 Hz, "
        "outside 4000-768000 Hz",
        "w2vkit transcribe: 2 files transcribed, 4 skipped (left out of the output)",
    ]


def test_dict_of_another_model_is_refused(setup, tmp_path, capsys):
    root, vocab, _, files = setup
    other = tmp_path / "dict.ltr.txt"
    other.write_text("| 3\nX 2\nY 1\n")
    argv = ["transcribe", str(root / "model.pt"), str(files["short"])]
    assert cli.main([*argv, "--dict", str(other)]) == 2
    assert capsys.readouterr().err == (
        f"w2vkit transcribe: --dict {other} differs from the vocabulary stored in "
        f"{root / 'model.pt'}: --dict is only for fairseq fine-tuned checkpoints, which store "
        "none; leave it out\n"
    )
    vocab.save(tmp_path / "same.txt")  # the model's own vocabulary: nothing is ignored
    assert cli.main([*argv, "--dict", str(tmp_path / "same.txt")]) == 0


def test_lexicon_free_with_a_word_lm_is_refused(setup, tmp_path, capsys):
    pytest.importorskip("flashlight.lib.text")
    root, _, _, files = setup
    KneserNeyModel([["CAT", "DOG"], ["DOG"]] * 3, 2).write_arpa(tmp_path / "w.arpa")
    argv = ["transcribe", str(root / "model.pt"), str(files["short"]), "--lm"]
    assert cli.main([*argv, str(tmp_path / "w.arpa"), "--lexicon-free"]) == 2
    assert capsys.readouterr().err == (
        f"w2vkit transcribe: --lexicon-free needs a letter LM (w2vkit lm build --letters), but "
        f"{tmp_path / 'w.arpa'} has 2 unigrams that are not symbols of the model, such as 'CAT': "
        "leave out --lexicon-free to decode with this word LM\n"
    )


def test_help_shows_the_beam_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["transcribe", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "LM score weight (default 2.0)" in text and "hypotheses kept (default 50)" in text


def test_jsonl_is_valid_after_windowing(setup, capsys):
    root, _, _, files = setup
    argv = ["transcribe", str(root / "model.pt"), str(files["long1"]), "--max-seconds", "0.5"]
    assert cli.main([*argv, "--format", "jsonl"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert all(word["end"] <= 2.0 for word in record["words"])
