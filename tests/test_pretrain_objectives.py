"""`w2vkit pretrain` with `objective: data2vec2` and `objective: best_rq`: the presets, exact resume
(EMA teacher and frozen quantizer included), checkpoints read as wav2vec 2.0 encoders, health
findings, and a loss that falls on synthetic speech."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY_YAML, make_manifest

from w2vkit import cli, load_model
from w2vkit.pretrain.health import BestRQMonitor, Data2Vec2Monitor
from w2vkit.pretrain.registry import build_config
from w2vkit.train import checkpoint
from w2vkit.train.config import load_layers

TINY = {
    "data2vec2": [
        "data2vec2.num_clones=2",
        "data2vec2.average_top_k_layers=2",
        "data2vec2.decoder_dim=32",
        "data2vec2.decoder_groups=4",
        "data2vec2.decoder_layers=2",
        "data2vec2.ema_decay=0.9",
        "data2vec2.ema_end_decay=0.99",
        "data2vec2.ema_anneal_end_step=6",
    ],
    "best_rq": ["best_rq.codebook_size=64", "best_rq.num_codebooks=2", "best_rq.num_mels=40"],
}


def _tiny_yaml(directory: Path) -> str:
    """tiny.yaml without its wav2vec 2.0 `loss` section, which other objectives do not have."""
    raw = yaml.safe_load(Path(TINY_YAML).read_text())
    raw.pop("loss")
    path = directory / "tiny_objective.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _run(manifest: Path, out_dir: Path, objective: str, *extra: str) -> int:
    return cli.main(
        [
            "pretrain",
            _tiny_yaml(out_dir.parent),
            f"objective={objective}",
            *TINY[objective],
            f"data.manifest_dir={manifest}",
            "data.min_samples=4000",
            "data.max_samples=8000",
            "data.max_batch_samples=32000",
            "train.log_interval=1",
            "train.validate_interval_steps=0",
            "optim.warmup_steps=2",
            "optim.total_steps=6",
            f"train.out_dir={out_dir}",
            *extra,
        ]
    )


def test_presets_resolve_by_name():
    base = build_config(load_layers("data2vec2_base", []))
    assert base.objective == "data2vec2"
    assert (base.data2vec2.num_clones, base.data2vec2.average_top_k_layers) == (8, 8)
    assert (base.data2vec2.ema_decay, base.data2vec2.ema_end_decay) == (0.999, 0.99999)
    assert base.model.masking.time_span_frames == 5 and base.optim.lr == 7.5e-4
    rq = build_config(load_layers("best_rq_base", []))
    assert rq.objective == "best_rq" and rq.best_rq.codebook_size == 8192
    assert rq.model.transformer.num_layers == 12
    for name, objective in (("data2vec2_cpu", "data2vec2"), ("best_rq_cpu", "best_rq")):
        cpu = build_config(load_layers(name, []))
        assert cpu.objective == objective and cpu.train.max_minutes == 30
        assert cpu.model.feature_extractor.kind == "spectrogram"


@pytest.mark.parametrize("objective", ["data2vec2", "best_rq"])
def test_resume_continues_bit_exactly_with_teacher_and_quantizer(objective, tmp_path):
    manifest = make_manifest(tmp_path / "tones")
    assert _run(manifest, tmp_path / "straight", objective, "train.max_steps=6") == 0
    assert _run(manifest, tmp_path / "split", objective, "train.max_steps=3") == 0
    assert _run(manifest, tmp_path / "split", objective, "train.max_steps=6") == 0
    straight = checkpoint.load(tmp_path / "straight" / checkpoint.LAST)["model"]
    split = checkpoint.load(tmp_path / "split" / checkpoint.LAST)["model"]
    assert straight.keys() == split.keys()
    heads = {"data2vec2": ("teacher.", "decoder."), "best_rq": ("rq.", "rq_head.")}[objective]
    assert any(k.startswith(heads) for k in straight)
    for name, value in straight.items():
        assert torch.equal(value, split[name]), name
    if objective == "data2vec2":
        # The teacher followed updates 1-5; update 6's step is folded in by the next forward.
        assert int(straight["teacher._extra_state"]) == 5
        assert not torch.equal(
            straight["teacher.encoder.layers.0.fc1.weight"], straight["encoder.layers.0.fc1.weight"]
        )


@pytest.mark.parametrize("objective", ["data2vec2", "best_rq"])
def test_checkpoint_loads_as_a_wav2vec2_encoder(objective, tmp_path):
    manifest = make_manifest(tmp_path / "tones")
    assert _run(manifest, tmp_path / "run", objective, "train.max_steps=2") == 0
    saved = checkpoint.load(tmp_path / "run" / checkpoint.LAST)["model"]
    model = load_model(tmp_path / "run" / checkpoint.LAST)
    for name, value in model.state_dict().items():
        if not name.startswith(("quantizer.", "target_proj.", "context_proj.")):
            assert torch.equal(value, saved[name]), name
    assert model.extract_features(torch.randn(1, 8000)).context.shape == (1, 24, 64)


def _records(values: list[dict], start: int = 0) -> list[dict]:
    return [
        {"split": "train", "num_updates": start + 10 * i, **value} for i, value in enumerate(values)
    ]


def test_data2vec2_health_reports_target_collapse_once():
    health = Data2Vec2Monitor(after_update=100, records=3)
    healthy = _records([{"target_var": 0.5, "pred_var": 0.2}] * 5, start=100)
    assert [f for r in healthy for f in health.observe(r)] == []
    collapsing = _records(
        [{"target_var": v, "pred_var": 0.2} for v in (0.2, 0.05, 0.03, 0.02, 0.01)], 150
    )
    findings = [f for r in collapsing for f in health.observe(r)]
    assert [(f.code, f.step) for f in findings] == [("target_collapse", 180)]
    assert "target_var 0.0200 < 0.1 for 3 log records" in findings[0].message
    assert "ema_decay" in findings[0].what_to_try
    # Before `after_update` a low spread is the start of training, not a collapse.
    early = Data2Vec2Monitor(after_update=1000)
    assert [f for r in collapsing for f in early.observe(r)] == []


def test_best_rq_health_reports_chance_accuracy_and_a_dominant_code():
    health = BestRQMonitor(chance_after_update=100, records=3)
    learning = _records(
        [{"accuracy": 0.3, "top_code_frac": 0.05, "code_perplexity": 200.0}] * 4, 100
    )
    assert [f for r in learning for f in health.observe(r)] == []
    stuck = _records([{"accuracy": 0.61, "top_code_frac": 0.6, "code_perplexity": 3.0}] * 3, 200)
    findings = [f for r in stuck for f in health.observe(r)]
    assert sorted(f.code for f in findings) == ["accuracy_at_chance", "code_dominates"]
    dominant = next(f for f in findings if f.code == "code_dominates")
    assert "60.0% of the masked frames (code perplexity 3.0)" in dominant.message
    # The generic findings still come through (no gradient at all).
    zero = _records([{"accuracy": 0.3, "top_code_frac": 0.05, "gnorm": 0.0}] * 3, 300)
    assert "zero_gradient" in [f.code for r in zero for f in health.observe(r)]


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["data2vec2", "best_rq"])
def test_loss_falls_on_synthetic_speech(objective, tmp_path):
    from w2vkit.data.synth import make_speech_corpus

    make_speech_corpus(tmp_path / "speech", minutes=1.0, seed=0)
    assert cli.main(["manifest", str(tmp_path / "speech"), "--dest", str(tmp_path / "m"),
                     "--valid-percent", "0", "--workers", "1"]) == 0  # fmt: skip
    extra = ["train.max_steps=40", "optim.total_steps=40", "optim.warmup_steps=5", "optim.lr=2e-3"]
    if objective == "data2vec2":
        extra.append("data2vec2.ema_anneal_end_step=40")
    assert _run(tmp_path / "m", tmp_path / "run", objective, *extra) == 0
    log = tmp_path / "run" / "train_log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    if objective == "data2vec2":
        assert last < 0.8 * first, losses
    else:
        # From ln(64) = 4.16 nats (uniform over the codes) towards the codes' own entropy; in so
        # few updates of the tiny model its accuracy is still at chance (the most frequent code).
        assert last < first - 0.3, losses
