"""Health diagnostics: each finding is provoked on purpose, and a healthy log raises none."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import TINY_YAML, make_manifest

from w2vkit import cli
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.pretrain.wav2vec2 import pretraining_loss
from w2vkit.pretrain.wav2vec2_health import ADVICE, HealthMonitor, diagnose_log

K, G = 10, 2
CHANCE = math.log2(1 + K)


def _healthy(step: int) -> dict:
    """A run that learns: loss falling below chance, perplexities high, accuracy moderate."""
    return {
        "split": "train",
        "num_updates": step,
        "loss_0": CHANCE - 0.01 * step,
        "accuracy": min(0.1 + 0.002 * step, 0.6),
        "prob_perplexity": 20.0,
        "code_perplexity": 18.0,
        "gnorm": 1.0 + 0.1 * math.sin(step),
        "num_nonfinite": 0,
        "data_wait_frac": 0.05,
    }


def _codes(records: list[dict], **thresholds) -> list[str]:
    monitor = HealthMonitor(K, G, **thresholds)
    return [f.code for r in records for f in monitor.observe(r)]


def test_a_healthy_run_raises_nothing():
    assert _codes([_healthy(s) for s in range(10, 3000, 10)]) == []


def test_plateau_at_chance_is_named_once_and_rearms():
    stuck = [_healthy(s) | {"loss_0": CHANCE + 0.02} for s in range(10, 200, 10)]
    monitor = HealthMonitor(K, G, plateau_updates=100)
    found = [(r["num_updates"], f) for r in stuck for f in monitor.observe(r)]
    assert [(step, f.code) for step, f in found] == [(100, "loss_at_chance")]
    finding = found[0][1]
    assert "log2(1+K) = 3.459" in finding.message and "last 100 updates" in finding.message
    assert finding.likely_cause == ADVICE["loss_at_chance"][0] and "optim.lr" in finding.what_to_try
    assert monitor.observe(_healthy(300) | {"loss_0": 2.0}) == []  # learning: cleared
    later = [_healthy(s) | {"loss_0": CHANCE} for s in range(310, 420, 10)]
    assert [f.code for r in later for f in monitor.observe(r)] == ["loss_at_chance"]


def test_a_run_that_ends_on_the_plateau_before_the_window_is_named_at_its_end():
    # 65 updates (a budget shorter than the warm-up): no 500-update window, still a finding.
    short = [_healthy(s) | {"loss_0": CHANCE - 0.03} for s in range(5, 70, 5)]
    monitor = HealthMonitor(K, G)
    assert [f for r in short for f in monitor.observe(r)] == []
    (finding,) = monitor.finish()
    assert (finding.code, finding.step) == ("ended_at_chance", 65)
    assert finding.message == (
        "the run ended on the plateau: the contrastive loss (median 3.429 bits over its last 5 "
        "log records) is within 0.1 bits of chance log2(1+K) = 3.459"
    )
    assert finding.likely_cause == ADVICE["ended_at_chance"][0]
    left = [_healthy(s) | {"loss_0": CHANCE - 0.3} for s in range(5, 70, 5)]
    monitor = HealthMonitor(K, G)
    assert [f for r in left for f in monitor.observe(r)] == [] and monitor.finish() == []
    # A long stuck run already has its loss_at_chance: no second finding at the end.
    stuck = [_healthy(s) | {"loss_0": CHANCE} for s in range(10, 200, 10)]
    monitor = HealthMonitor(K, G, plateau_updates=100)
    assert [f.code for r in stuck for f in monitor.observe(r)] == ["loss_at_chance"]
    assert monitor.finish() == []


def test_a_run_that_ends_with_its_learning_rate_still_rising_is_named_at_its_end():
    rising = [_healthy(s) | {"lr": 1e-4 * s / 10} for s in range(10, 70, 10)]
    monitor = HealthMonitor(K, G)
    assert [f for r in rising for f in monitor.observe(r)] == []
    (finding,) = monitor.finish()
    assert (finding.code, finding.step) == ("ended_in_warmup", 60)
    assert finding.message == (
        "the run ended at update 60 with its learning rate still rising (0.0005 -> 0.0006 over "
        "its last two log records)"
    )
    decaying = [_healthy(s) | {"lr": 1e-3 / s} for s in range(10, 70, 10)]
    monitor = HealthMonitor(K, G)
    assert [f for r in decaying for f in monitor.observe(r)] == [] and monitor.finish() == []


def test_plateau_from_a_real_run_with_a_tiny_learning_rate(tmp_path):
    dest = make_manifest(tmp_path, num_files=6, valid_percent=0.0)
    out_dir = tmp_path / "run"
    argv = ["pretrain", TINY_YAML, f"data.manifest_dir={dest}", f"train.out_dir={out_dir}"]
    argv += ["train.max_steps=10", "train.log_interval=2", "data.valid_split=", "optim.lr=1e-9"]
    argv += ["data.max_batch_samples=32000"]
    assert cli.main(argv) == 0
    findings = diagnose_log(out_dir / "train_log.jsonl", plateau_updates=10)  # K, G: config.yaml
    # The tiny codebook (2 x 16 entries) also draws many negatives equal to their positive, and
    # 10 updates end inside tiny's 30-update warm-up (the LR still rising at the last record).
    codes = [f.code for f in findings]
    assert (
        {"loss_at_chance", "ended_in_warmup"}
        <= set(codes)
        <= {
            "loss_at_chance",
            "negatives_equal_positive",
            "ended_in_warmup",
        }
    )
    plateau = findings[codes.index("loss_at_chance")]
    assert "log2(1+K) = 3.459" in plateau.message and plateau.step == 10


def test_codebook_collapse_of_a_model_whose_quantizer_projection_is_zero():
    """All-zero logits: every frame takes entry 0 of each codebook, code perplexity = G."""
    torch.manual_seed(0)
    model = Wav2Vec2Model.from_preset("tiny")
    with torch.no_grad():
        model.quantizer.weight_proj.weight.zero_()
    wav = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    terms = pretraining_loss(
        model(wav, temperature=2.0, generator=torch.Generator().manual_seed(0))
    )
    assert terms.code_perplexity == pytest.approx(G)
    records = [
        _healthy(s)
        | {"code_perplexity": terms.code_perplexity, "prob_perplexity": terms.prob_perplexity}
        for s in (10, 20, 30, 40)
    ]
    monitor = HealthMonitor(K, G)
    found = [f for r in records for f in monitor.observe(r)]
    assert [(f.code, f.step) for f in found] == [("codebook_collapse", 30)]  # 3 records in a row
    assert "code_perplexity 2.00 <= 4" in found[0].message
    assert "diversity_weight" in found[0].what_to_try
    assert HealthMonitor(K, 0).observe(records[0]) == []  # no quantizer, no codebook
    tiny = HealthMonitor.for_model(model.cfg)  # K = 10 within-utterance negatives, G = 2
    assert (tiny.chance_bits, tiny.num_groups) == (CHANCE, G)


def test_accuracy_near_one_early_is_a_trivial_task():
    records = [_healthy(10), _healthy(20) | {"accuracy": 0.995}]
    assert _codes(records) == ["trivial_task"]
    assert _codes([_healthy(5000) | {"accuracy": 0.995}]) == []  # late: a converged easy corpus
    same = [_healthy(s) | {"negatives_equal_positive": 0.3} for s in (10, 20, 30)]
    assert _codes(same) == ["negatives_equal_positive"]
    # The first records of a healthy run, before the codes spread out: no finding.
    fractions = {10: 0.13, 20: 0.06, 30: 0.3, 40: 0.3}  # never 3 log records in a row
    early = [_healthy(s) | {"negatives_equal_positive": f} for s, f in fractions.items()]
    assert _codes(early) == []


def test_gradient_norm_zero_or_exploding():
    zero = [_healthy(s) | {"gnorm": 0.0} for s in (10, 20, 30)]
    assert _codes(zero) == ["zero_gradient"]
    spike = [_healthy(s) for s in range(10, 110, 10)] + [_healthy(110) | {"gnorm": 50.0}]
    assert _codes(spike) == ["exploding_gradient"]
    assert _codes(spike[:-1] + [_healthy(110) | {"gnorm": math.inf}]) == ["exploding_gradient"]
    assert _codes(spike[:-1] + [_healthy(110) | {"gnorm": 15.0}]) == []  # 15x: below 20x


def test_nonfinite_streak_and_data_bottleneck():
    counts = [0, 0, 1, 2, 3, 3]
    records = [_healthy(10 * i) | {"num_nonfinite": n} for i, n in enumerate(counts, start=1)]
    monitor = HealthMonitor(K, G)
    found = [f for r in records for f in monitor.observe(r)]
    assert [(f.code, f.step) for f in found] == [("nonfinite_streak", 50)]
    assert "3 updates skipped" in found[0].message
    waiting = [_healthy(s) | {"data_wait_frac": 0.6} for s in (10, 20, 30)]
    assert _codes(waiting) == ["data_bottleneck"]
    assert _codes(waiting[:2]) == []


def test_validation_records_are_ignored_and_bad_arguments_refused(tmp_path):
    assert HealthMonitor(K, G).observe({"split": "valid", "accuracy": 1.0, "num_updates": 1}) == []
    with pytest.raises(ValueError, match="num_negatives >= 1"):
        HealthMonitor(0, G)
    (tmp_path / "train_log.jsonl").write_text(json.dumps(_healthy(10)) + "\n")
    with pytest.raises(FileNotFoundError, match="config.yaml not found"):
        diagnose_log(tmp_path / "train_log.jsonl")
    # A crashed last line; update 100 is well below chance (no end-of-run plateau finding).
    (tmp_path / "train_log.jsonl").write_text(json.dumps(_healthy(100)) + '\n{"cut')
    assert diagnose_log(tmp_path / "train_log.jsonl", num_negatives=K, num_groups=G) == []


def test_pretrain_prints_each_health_finding_once_on_the_console(tmp_path, capsys):
    dest = make_manifest(tmp_path, num_files=6, valid_percent=0.0)
    argv = ["pretrain", TINY_YAML, f"data.manifest_dir={dest}", f"train.out_dir={tmp_path / 'run'}"]
    argv += ["train.max_steps=10", "train.log_interval=2", "data.valid_split=", "optim.lr=1e-9"]
    argv += ["data.max_batch_samples=32000", "model.quantizer.num_entries=2"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    logged = diagnose_log(tmp_path / "run" / "train_log.jsonl")  # what the monitor saw, offline
    printed = [line for line in out.splitlines() if line.startswith("health [")]
    # The end-of-run findings are the replay's (the live run ends with its summary's notes).
    during = [f for f in logged if not f.code.startswith("ended_")]
    assert [f.format().splitlines()[0] for f in during] == printed  # once each, as they appear
    assert [f.code for f in logged if f not in during] == ["ended_in_warmup"]  # 10 of 30 updates
    assert printed, "2 x 2 codes draw negatives equal to their positive at lr 0"
