"""configs/pretrain/cpu.yaml: found by name, resolves to the small-budget recipe, and trains."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from helpers import make_manifest

from w2vkit import cli, load_model
from w2vkit.configs import find_config
from w2vkit.model.config import BASE_CONV_LAYERS
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.pretrain.registry import build_config
from w2vkit.train.config import load_layers

REPO = Path(__file__).resolve().parents[1]


def test_the_recipe_is_found_by_name_and_through_the_configs_folder():
    assert find_config("cpu").resolve() == (REPO / "configs/pretrain/cpu.yaml").resolve()
    by_name = build_config(load_layers("cpu", []))
    assert by_name == build_config(load_layers(REPO / "configs/pretrain/cpu.yaml", []))
    assert by_name.train.max_minutes == 30 and by_name.train.max_steps == 0
    transformer = by_name.model.transformer
    assert (transformer.num_layers, transformer.model_dim) == (4, 256)


def test_the_recipe_keeps_the_base_frame_grid():
    """Same strides as BASE: phone labels (`w2vkit labels --phones`) match its frames."""
    cfg = build_config(load_layers("cpu", []))
    assert [(k, s) for _, k, s in cfg.model.feature_extractor.conv_layers] == [
        (k, s) for _, k, s in BASE_CONV_LAYERS
    ]
    model = Wav2Vec2Model(cfg.model).eval()
    with torch.no_grad():
        states = model.extract_features(torch.randn(1, 16000)).hidden_states
    assert len(states) == 5 and states[-1].shape == (1, 49, 256)  # (S - 400) // 320 + 1 frames


def test_a_few_updates_on_a_tiny_corpus_give_a_finite_loss_and_a_loadable_model(tmp_path):
    manifest = make_manifest(tmp_path / "tones")
    out_dir = tmp_path / "run"
    code = cli.main(
        [
            "pretrain",
            "cpu",
            f"data.manifest_dir={manifest}",
            f"train.out_dir={out_dir}",
            "train.max_steps=3",
            "data.min_samples=8000",
            "data.max_samples=16000",
            "data.max_batch_samples=32000",
            "train.validate_interval_steps=0",
            "train.log_interval=1",
        ]  # fmt: skip
    )
    assert code == 0
    records = [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    # The spectrogram front-end's checkpoint loads (its shapes are checked on the meta device).
    model = load_model(out_dir / "checkpoint_last.pt")
    saved = torch.load(out_dir / "checkpoint_last.pt", weights_only=True)["model"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
