"""`torch.compile` of the Transformer layer and the conv stack (`fullgraph=True`: no graph break),
and `train.compile=true` training to eager's losses. The compiled graphs go through torch's
"aot_eager" backend here (Dynamo and AOT autograd, the same graphs the GPU's inductor gets, without
minutes of C++ code generation on two cores); `bench/gpu_window.sh` trains with inductor."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import TINY_YAML, make_manifest

from w2vkit import cli
from w2vkit.data.collate import collate
from w2vkit.model import compiled
from w2vkit.model.config import preset
from w2vkit.model.feature_extractor import ConvFeatureExtractor
from w2vkit.model.transformer import EncoderLayer


@pytest.fixture(autouse=True)
def _aot_eager(monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled_matches_eager(module: torch.nn.Module, x: torch.Tensor, *args) -> None:
    def run(m: torch.nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
        module.zero_grad(set_to_none=True)
        y = m(x, *args)
        y.pow(2).mean().backward()
        return y.detach(), [p.grad for p in module.parameters()]

    want_y, want_grads = run(module)
    module.compile(fullgraph=True, dynamic=False, backend=compiled.BACKEND)  # raises on a break
    got_y, got_grads = run(module)
    torch.testing.assert_close(got_y, want_y, rtol=1e-5, atol=1e-5)
    for got, want in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_base_encoder_layer_compiles_whole_and_matches_eager():
    cfg = replace(preset("base").transformer, model_dim=64, ffn_dim=128, num_heads=4)
    torch.manual_seed(0)
    layer = EncoderLayer(replace(cfg, dropout_prob=0.0, attention_dropout_prob=0.0)).train()
    _compiled_matches_eager(layer, torch.randn(2, 50, 64), None)


@pytest.mark.slow
def test_conv_stack_compiles_whole_and_matches_eager():
    # BASE's kernels and strides (320 samples a frame), fewer channels
    fe = replace(
        preset("base").feature_extractor,
        conv_layers=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2,
    )
    torch.manual_seed(0)
    _compiled_matches_eager(ConvFeatureExtractor(fe).train(), torch.randn(2, 8000))


def test_crops_round_down_to_the_length_multiple():
    assert compiled.length_multiple(preset("base")) == 16000  # 50 frames of 320 samples: 1 s
    wavs = [torch.ones(37000), torch.ones(52000)]
    batch = collate(wavs, [0, 1], pad=False, length_multiple=16000)
    assert batch.wav.shape == (2, 32000)  # the shortest row, 37000, rounded down
    short = collate([torch.ones(9000), torch.ones(20000)], [0, 1], pad=False, length_multiple=16000)
    assert short.wav.shape == (2, 9000)  # shorter than one multiple: kept whole
    padded = collate(wavs, [0, 1], pad=True, length_multiple=16000)
    assert padded.wav.shape == (2, 52000)  # padding (fine-tuning) is not rounded


def _losses(tmp_path: Path, *overrides: str) -> list[float]:
    out = tmp_path / "run"
    argv = ["pretrain", TINY_YAML, f"data.manifest_dir={make_manifest(tmp_path / 'data')}"]
    argv += [f"train.out_dir={out}", "train.max_steps=3", "train.log_interval=1"]
    argv += ["train.validate_interval_steps=0", "data.min_samples=16000", *overrides]
    assert cli.main(argv) == 0
    lines = (out / "train_log.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["split"] == "train"]


@pytest.mark.slow
def test_train_compile_trains_to_the_eager_losses(tmp_path, monkeypatch):
    import w2vkit.train.session as recipe  # the one session function compiles the model

    # Both runs round the crops (train.compile=true); the eager one compiles nothing.
    stages: list[int] = []
    monkeypatch.setattr(recipe, "compile_stages", lambda m: stages.append(0))
    eager = _losses(tmp_path / "eager", "train.compile=true")
    monkeypatch.setattr(
        recipe, "compile_stages", lambda m: stages.append(compiled.compile_stages(m))
    )
    compiled_run = _losses(tmp_path / "compiled", "train.compile=true")
    assert stages == [0, 1 + 2]  # tiny: the conv stack and 2 Transformer layers
    assert compiled_run == pytest.approx(eager, rel=1e-4)
