"""`w2vkit.load_model` on every format, and `load_weights`.

Each format is loaded and its hidden states compared with an independent reference: the model
that was saved, HF transformers' own `Wav2Vec2Model` on the same directory, or the states fairseq
itself computed (the committed fixture).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import audiogen
import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

import w2vkit
from w2vkit.config import to_dict
from w2vkit.data.manifest import Manifest, write_manifest
from w2vkit.interop import CheckpointError, ModelRecord, detect_format, hf, load_weights
from w2vkit.interop.native import PRETRAINING_HEADS
from w2vkit.model.config import preset
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.recipes import pretrain

FAIRSEQ = Path(__file__).parent / "fixtures" / "fairseq"


def _random_model(norm_mode: str = "group_norm") -> Wav2Vec2Model:
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg = replace(cfg, feature_extractor=replace(cfg.feature_extractor, norm_mode=norm_mode))
    return Wav2Vec2Model(cfg).eval()


def _states(model: Wav2Vec2Model, wav: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.extract_features(wav).hidden_states


def _wav() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).standard_normal((2, 6000), np.float32))


def _assert_same_states(model: Wav2Vec2Model, reference: Wav2Vec2Model) -> None:
    wav = _wav()
    for got, want in zip(_states(model, wav), _states(reference, wav), strict=True):
        assert torch.equal(got, want)


def test_w2vkit_checkpoint_loads_in_eval_mode_with_every_tensor(tmp_path):
    original = _random_model()
    torch.save(
        {"model": original.state_dict(), "config": {"model": to_dict(original.cfg)}},
        tmp_path / "ckpt.pt",
    )
    model = w2vkit.load_model(tmp_path / "ckpt.pt")
    assert not model.training
    assert model.cfg == original.cfg
    loaded, saved = model.state_dict(), original.state_dict()
    assert loaded.keys() == saved.keys()  # the pretraining heads are kept
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    _assert_same_states(model, original)
    again = w2vkit.load_model(tmp_path / "ckpt.pt", device="cpu")
    assert not again.training
    _assert_same_states(again, original)


def test_hf_directory_and_bare_safetensors_match_transformers(tmp_path):
    from transformers import Wav2Vec2Model as HFModel

    original = _random_model("layer_norm")
    hf.save_hf(ModelRecord(original.cfg, original.state_dict()), tmp_path / "hf")
    reference = HFModel.from_pretrained(tmp_path / "hf").eval()
    wav = _wav()
    with torch.no_grad():
        want = reference(wav, output_hidden_states=True).hidden_states
    for path in (tmp_path / "hf", tmp_path / "hf" / "model.safetensors"):
        assert detect_format(path) == "hf"
        model = w2vkit.load_model(path)
        assert model.normalize_input is True  # save_hf's default for layer-norm extractors
        got = _states(model, wav)
        assert len(got) == len(want)
        for layer, (a, b) in enumerate(zip(got, want, strict=True)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=f"{path} layer {layer}")
        assert torch.equal(
            model.quantizer.codevectors, original.quantizer.codevectors
        )  # heads kept


def test_bare_safetensors_with_another_name_and_without_config(tmp_path):
    original = _random_model()
    hf.save_hf(ModelRecord(original.cfg, original.state_dict()), tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "hf" / "step_100.safetensors")
    _assert_same_states(w2vkit.load_model(tmp_path / "hf" / "step_100.safetensors"), original)
    (tmp_path / "lone").mkdir()
    save_file({"x": torch.zeros(1)}, str(tmp_path / "lone" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="needs the HF config.json that describes it"):
        w2vkit.load_model(tmp_path / "lone" / "model.safetensors")


def test_encoder_only_directory_gets_fresh_heads_and_the_same_states(tmp_path):
    original = _random_model()
    hf.save_hf(ModelRecord(original.cfg, original.state_dict()), tmp_path / "enc", heads=False)
    torch.manual_seed(123)
    model = w2vkit.load_model(tmp_path / "enc")
    _assert_same_states(model, original)
    torch.manual_seed(123)
    fresh = Wav2Vec2Model(original.cfg)  # the heads load_model initialised, drawn the same way
    heads = [k for k in fresh.state_dict() if k.startswith(PRETRAINING_HEADS)]
    assert heads
    assert all(torch.equal(model.state_dict()[k], fresh.state_dict()[k]) for k in heads)


def test_fairseq_checkpoint_matches_fairseq_states():
    ref = np.load(FAIRSEQ / "reference.npz")
    model = w2vkit.load_model(FAIRSEQ / "base_args.pt")
    got = _states(model, torch.from_numpy(ref["wav"]))
    want = torch.from_numpy(ref["base_states"])  # (L+1, B, T, D), computed by fairseq
    assert len(got) == want.shape[0]
    for layer, state in enumerate(got):
        torch.testing.assert_close(state, want[layer], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("norm_mode", "recorded", "expected"),
    [("group_norm", None, False), ("layer_norm", None, True), ("group_norm", True, True)],
)
def test_normalize_input_is_what_the_checkpoint_records(tmp_path, norm_mode, recorded, expected):
    original = _random_model(norm_mode)
    payload = {"model": original.state_dict(), "config": {"model": to_dict(original.cfg)}}
    if recorded is not None:
        payload["audio"] = {"normalize": recorded}
    torch.save(payload, tmp_path / "ckpt.pt")
    assert w2vkit.load_model(tmp_path / "ckpt.pt").normalize_input is expected


def test_load_weights_names_what_it_left_and_refuses_damage():
    source = _random_model().state_dict()
    model = _random_model()
    encoder_only = {k: v for k, v in source.items() if not k.startswith(PRETRAINING_HEADS)}
    left = load_weights(model, encoder_only, source="enc.pt")
    assert sorted(left) == sorted(k for k in source if k.startswith(PRETRAINING_HEADS))
    damaged = {k: v for k, v in source.items() if k != "encoder.norm.weight"}
    with pytest.raises(CheckpointError, match=r"enc\.pt: .*missing encoder\.norm\.weight"):
        load_weights(model, damaged, source="enc.pt")
    part_head = {k: v for k, v in source.items() if not k.startswith("quantizer.")}
    with pytest.raises(CheckpointError, match="missing quantizer"):
        load_weights(model, part_head, source="enc.pt")
    extra = {**source, "decoder.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="unexpected decoder.weight"):
        load_weights(model, extra, source="enc.pt")


def test_readme_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## From Python: load a model, embed a file", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    original = _random_model()  # stands in for the checkpoint `make demo` writes
    Path("runs/demo/pretrain").mkdir(parents=True)
    payload = {"model": original.state_dict(), "config": {"model": to_dict(original.cfg)}}
    torch.save(payload, "runs/demo/pretrain/checkpoint_last.pt")
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert capsys.readouterr().out == "(99, 64)\n"
    assert namespace["states"].shape == (99, 64)


def _pretrain(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    pretrain.add_arguments(parser)
    return pretrain.run(parser.parse_args(argv))


def test_pretrain_init_from_uses_the_same_rule(tmp_path, capsys):
    """An encoder-only source starts with fresh heads (and says so); weights that do not fit the
    overridden model are refused by name."""
    paths = audiogen.make_corpus(tmp_path / "audio", 2, (0.6, 0.8))
    frames = [sf.info(p).frames for p in paths]
    write_manifest(
        tmp_path / "train.tsv", Manifest(tmp_path / "audio", [p.name for p in paths], frames)
    )
    original = _random_model()
    hf.save_hf(ModelRecord(original.cfg, original.state_dict()), tmp_path / "enc", heads=False)
    common = [
        "tiny",
        f"data.manifest_dir={tmp_path}",
        "data.valid_split=",
        "--init-from",
        str(tmp_path / "enc"),
    ]
    assert _pretrain([*common, "train.max_steps=1", f"train.out_dir={tmp_path / 'run'}"]) == 0
    num_heads = sum(k.startswith(PRETRAINING_HEADS) for k in original.state_dict())
    assert (
        f"--init-from lacks {num_heads} tensors, left at their initial values"
        in capsys.readouterr().out
    )
    with pytest.raises(
        CheckpointError, match=r"enc: weights do not fit .*unexpected encoder\.layers\.1\."
    ):
        _pretrain([*common, "model.transformer.num_layers=1", f"train.out_dir={tmp_path / 'bad'}"])


OLD_READERS = (
    "read_pretrained",
    "load_pretrained",
    "build_model",
    "read_encoder",
    "read_finetuned",
    "_read_source",
    "Wav2Vec2Model.from_pretrained",
    "def from_pretrained",
)


def test_one_public_reader_old_names_are_gone():
    """`w2vkit.load_model` (over `interop.read_model` + `build`) is the only way to read a model:
    the package, README and docs name none of the readers it replaced. HF's own
    `transformers.Wav2Vec2Model.from_pretrained` is spelled with its package where docs name it."""
    root = Path(__file__).resolve().parents[1]
    files = [
        *root.joinpath("src").rglob("*.py"),
        root / "README.md",
        *root.joinpath("docs").rglob("*.md"),
    ]
    found = [
        f"{path.relative_to(root)}:{number}: {name}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        for name in OLD_READERS
        if name in line.replace("transformers.Wav2Vec2Model.from_pretrained", "")
    ]
    assert found == []
    assert not hasattr(w2vkit.Wav2Vec2Model, "from_pretrained")
