"""Every checkpoint kind the project writes, through every command that takes a model (issue 28).

Kinds: pretraining with each objective (wav2vec2, data2vec2, best_rq, hubert), CTC fine-tuning,
HF exports (`convert --to hf`) of a pretrained and of a fine-tuned model, and a fairseq checkpoint
(the committed fixture, written by fairseq itself). Each (kind, command) pair is its own test: the
command either works (exit 0 and its output, of the expected shape) or refuses in one line on
stderr (exit 2, no traceback) that names what to use instead.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from helpers import TINY_YAML, make_letter_corpus

import w2vkit
from w2vkit import cli
from w2vkit.features.store import load_features
from w2vkit.model.ctc import Wav2Vec2ForCTC
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.train import checkpoint

FAIRSEQ = Path(__file__).parents[1] / "fixtures" / "fairseq" / "base_omegaconf.pt"
PRETRAINED = ("wav2vec2", "data2vec2", "best_rq", "hubert")
KINDS = (*PRETRAINED, "ctc", "hf", "hf_ctc", "fairseq")
FINE_TUNED = ("ctc", "hf_ctc")
# What the tiny objectives need beyond tiny.yaml (as tests/test_pretrain_objectives.py sets them).
OBJECTIVE_ARGS = {
    "wav2vec2": [],
    "data2vec2": [
        "data2vec2.num_clones=2",
        "data2vec2.average_top_k_layers=2",
        "data2vec2.decoder_dim=32",
        "data2vec2.decoder_groups=4",
        "data2vec2.decoder_layers=2",
    ],
    "best_rq": ["best_rq.codebook_size=64", "best_rq.num_codebooks=2", "best_rq.num_mels=40"],
    "hubert": ["hubert.num_classes=[8]", "data.label_rate=100"],
}
COMMON = [
    "data.min_samples=4000",
    "data.max_samples=16000",
    "data.max_batch_samples=32000",
    "data.num_workers=0",
    "train.log_interval=1",
    "train.validate_interval_steps=0",
    "optim.warmup_steps=1",
]


def _recipe(directory: Path, objective: str) -> str:
    """tiny.yaml, without its wav2vec 2.0 `loss` section for the other objectives."""
    raw = yaml.safe_load(Path(TINY_YAML).read_text())
    if objective != "wav2vec2":
        raw.pop("loss")
    path = directory / f"tiny_{objective}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _pretrain(data: Path, out: Path, objective: str, *extra: str) -> int:
    recipe = _recipe(out.parent, objective)
    args = [f"objective={objective}", *OBJECTIVE_ARGS[objective], f"data.manifest_dir={data}"]
    return cli.main(["pretrain", recipe, *args, *COMMON, f"train.out_dir={out}", *extra])


def _finetune(data: Path, out: Path, init: Path) -> int:
    return cli.main(
        [
            "finetune", "--init-from", str(init), "preset=cpu", f"data.manifest_dir={data}",
            f"train.out_dir={out}", "data.max_batch_samples=40000", "ctc.freeze_encoder_steps=2",
            "train.max_steps=2", "optim.total_steps=2", "train.validate_interval_steps=0",
            "train.save_interval_steps=0", "train.log_interval=1",
        ]
    )  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Every kind built once: {"data": letter corpus, "kinds": {kind: (model path, run dir)}}."""
    root = tmp_path_factory.mktemp("every")
    data = make_letter_corpus(root / "data", {"train": 6, "valid": 3})
    assert cli.main(["targets", str(data), "--clusters", "8", "--max-frames", "4000"]) == 0
    kinds: dict[str, tuple[Path, Path | None]] = {}
    for objective in PRETRAINED:
        run = root / objective
        assert _pretrain(data, run, objective, "train.max_steps=2") == 0, objective
        kinds[objective] = (run / checkpoint.LAST, run)
    assert _finetune(data, root / "ctc", kinds["wav2vec2"][0]) == 0
    kinds["ctc"] = (root / "ctc" / checkpoint.LAST, root / "ctc")
    for kind, source, extra in (("hf", "wav2vec2", []), ("hf_ctc", "ctc", ["--hf-class", "ctc"])):
        dst = root / kind
        assert cli.main(["convert", str(kinds[source][0]), str(dst), "--to", "hf", *extra]) == 0
        kinds[kind] = (dst, None)
    (root / "fairseq").mkdir()
    shutil.copy(FAIRSEQ, root / "fairseq" / "model.pt")
    kinds["fairseq"] = (root / "fairseq" / "model.pt", None)
    labels = root / "speaker.tsv"  # an utterance label for the probe: two classes, alternating
    rows = [line.split("\t")[0] for line in (data / "train.tsv").read_text().splitlines()[1:]]
    labels.write_text("".join(f"{path}\t{'ab'[i % 2]}\n" for i, path in enumerate(rows)))
    return {"root": root, "data": data, "kinds": kinds, "labels": labels}


def _one_line_refusal(capsys, code: int, *expected: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, err)
    assert "\n" not in err and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def _audio(world: dict) -> Path:
    data = world["data"]
    root, first = (data / "valid.tsv").read_text().splitlines()[:2]
    return Path(root) / first.split("\t")[0]


@pytest.mark.parametrize("kind", KINDS)
def test_extract(world, kind, tmp_path):
    model, _ = world["kinds"][kind]
    out = tmp_path / "feats"
    args = [str(model), str(world["data"] / "valid.tsv"), "--out", str(out), "--quiet"]
    assert cli.main(["extract", *args, "--layers", "0,1", "--device", "cpu"]) == 0
    stored = load_features(out, layer=1)
    assert len(stored) == 3
    for features in stored.values():
        assert features.ndim == 2 and features.shape[0] > 10  # (T, D), 20 ms frames
    # The same model as `load_model` + `embed_file` give it (the same normalisation included).
    path = _audio(world)
    expected = w2vkit.embed_file(w2vkit.load_model(model), path, layer=1)
    got = stored[str(path.relative_to(world["data"]))].float().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_probe_random_baseline(world, kind, tmp_path):
    model, _ = world["kinds"][kind]
    feats = tmp_path / "feats"
    args = [str(model), str(world["data"] / "train.tsv"), "--out", str(feats), "--quiet"]
    assert cli.main(["extract", *args, "--layers", "0,1", "--device", "cpu"]) == 0
    probe = [str(feats), "--labels", str(world["labels"]), "--test-fraction", "0.34"]
    assert cli.main(["probe", *probe, "--baseline", "random", "--out", str(tmp_path / "p")]) == 0
    report = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert {s["features"] for s in report["scores"]} == {"pretrained", "random"}


@pytest.mark.parametrize("kind", KINDS)
def test_transcribe(world, kind, tmp_path, capsys):
    model, _ = world["kinds"][kind]
    out, earlier = tmp_path / "t.tsv", tmp_path / "earlier.tsv"
    earlier.write_text("an earlier run's transcripts\n")
    argv = ["transcribe", str(model), str(_audio(world)), "--format", "tsv"]
    code = cli.main([*argv, "-o", str(out)])
    if kind in FINE_TUNED:
        assert code == 0
        lines = out.read_text().splitlines()
        assert len(lines) == 1 and lines[0].startswith(str(_audio(world)))
    else:
        _one_line_refusal(capsys, code, "not a fine-tuned CTC model", "with w2vkit finetune")
        assert not out.exists()  # no empty output left behind, and an existing one is kept
        assert cli.main([*argv, "-o", str(earlier)]) == 2
        assert earlier.read_text() == "an earlier run's transcripts\n"


@pytest.mark.parametrize("kind", KINDS)
def test_convert_to_hf(world, kind, tmp_path, capsys):
    model, _ = world["kinds"][kind]
    argv = ["convert", str(model), str(tmp_path / "hf"), "--to", "hf"]
    code = cli.main([*argv, *(["--hf-class", "ctc"] if kind in FINE_TUNED else [])])
    if kind in ("data2vec2", "best_rq"):  # no quantizer: HF's pretraining class does not fit
        _one_line_refusal(capsys, code, "no pretraining heads", "(--hf-class model)")
        code = cli.main([*argv, "--hf-class", "model"])
    assert code == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    if kind == "hubert":  # HubertModel, for transformers users; w2vkit reads the source instead
        assert config["model_type"] == "hubert"
        code = cli.main(["convert", str(tmp_path / "hf"), str(tmp_path / "b.pt"), "--to", "w2vkit"])
        _one_line_refusal(capsys, code, "model_type='hubert'", "checkpoint this directory was")
        return
    assert config["model_type"] == "wav2vec2"
    loaded = w2vkit.load_model(tmp_path / "hf")
    assert isinstance(loaded, Wav2Vec2ForCTC if kind in FINE_TUNED else Wav2Vec2Model)


@pytest.mark.parametrize("kind", KINDS)
def test_convert_to_w2vkit(world, kind, tmp_path, capsys):
    model, _ = world["kinds"][kind]
    code = cli.main(["convert", str(model), str(tmp_path / "m.pt"), "--to", "w2vkit"])
    assert code == 0, capsys.readouterr().err
    loaded = w2vkit.load_model(tmp_path / "m.pt")
    assert isinstance(loaded, Wav2Vec2ForCTC if kind in FINE_TUNED else Wav2Vec2Model)


@pytest.mark.parametrize("kind", KINDS)
def test_finetune_init_from(world, kind, tmp_path, capsys):
    model, _ = world["kinds"][kind]
    assert _finetune(world["data"], tmp_path / "ft", model) == 0, capsys.readouterr().err
    saved = checkpoint.load(tmp_path / "ft" / checkpoint.LAST)
    assert saved["progress"]["step"] == 2 and "lm_head.weight" in saved["model"]
    # The encoder is frozen for both updates: it is the source's, weight for weight.
    source = w2vkit.load_model(model, head="encoder").state_dict()
    for key, value in source.items():
        assert torch.equal(saved["model"][f"wav2vec2.{key}"], value), key


@pytest.mark.parametrize("kind", KINDS)
def test_pretrain_init_from(world, kind, tmp_path, capsys):
    model, _ = world["kinds"][kind]
    out = tmp_path / "pt"
    code = _pretrain(world["data"], out, "wav2vec2", "train.max_steps=1", "--init-from", str(model))
    assert code == 0, capsys.readouterr().err
    saved = checkpoint.load(out / checkpoint.LAST)
    assert saved["progress"]["step"] == 1
    # One Adam update at tiny.yaml's peak LR moves a weight by about the LR; a fresh init differs
    # by far more: the encoder started from the source's weights.
    source = w2vkit.load_model(model, head="encoder").state_dict()
    for key, value in source.items():
        assert float((saved["model"][key] - value).abs().max()) <= 2 * 3e-3, key


@pytest.mark.parametrize("kind", KINDS)
def test_load_model(world, kind):
    model, _ = world["kinds"][kind]
    loaded = w2vkit.load_model(model)
    assert isinstance(loaded, Wav2Vec2ForCTC if kind in FINE_TUNED else Wav2Vec2Model)
    assert not loaded.training
    encoder = w2vkit.load_model(model, head="encoder")
    assert isinstance(encoder, Wav2Vec2Model)


@pytest.mark.parametrize("kind", KINDS)
def test_embed_file(world, kind):
    model, _ = world["kinds"][kind]
    loaded = w2vkit.load_model(model)
    path = _audio(world)
    states = w2vkit.embed_file(loaded, path, layer=1)
    wav, rate = sf.read(path, dtype="float32")
    # (T, D): the conv front-end's frames, a 400-sample receptive field every 320 samples
    assert rate == 16000 and states.shape[0] == (len(wav) - 400) // 320 + 1
    from_samples = w2vkit.embed_file(loaded, wav, rate, layer=1)
    np.testing.assert_array_equal(states, from_samples)
    with torch.no_grad():
        assert np.isfinite(states).all()


@pytest.mark.parametrize("kind", KINDS)
def test_report(world, kind, tmp_path, capsys):
    model, run = world["kinds"][kind]
    directory = run if run is not None else model.parent if model.is_file() else model
    code = cli.main(["report", str(directory), "--out", str(tmp_path / "r")])
    if run is not None:
        assert code == 0, capsys.readouterr().err
        assert (tmp_path / "r" / "report.md").is_file()
    else:
        _one_line_refusal(capsys, code, "w2vkit pretrain")
