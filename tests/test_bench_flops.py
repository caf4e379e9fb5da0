"""The analytic FLOP count behind bench/train_step.py's MFU, against hand-computed figures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from w2vkit.model.config import base

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from flops import forward_flops, frames_of, training_flops  # noqa: E402


def test_base_forward_flops_per_audio_second_at_15_6_second_crops():
    seconds = 15.6
    parts = {k: v / seconds / 1e9 for k, v in forward_flops(base(), int(seconds * 16000)).items()}
    # 12 layers x 2 x 50 frames/s x (4 x 768^2 + 2 x 768 x 3072) = 8.49 GFLOP/s
    assert parts["linears"] == pytest.approx(
        12 * 2 * (779 / seconds) * (4 * 768**2 + 2 * 768 * 3072) / 1e9
    )
    assert parts["linears"] == pytest.approx(8.5, abs=0.05)
    assert parts["attention"] == pytest.approx(1.4, abs=0.05)  # 12 x 4 x 779^2 x 768 / 15.6 s
    assert parts["pos_conv"] == pytest.approx(0.47, abs=0.01)  # 2 x 50 x 768 x 48 x 128
    assert parts["conv_encoder"] == pytest.approx(4.9, abs=0.05)
    assert sum(parts.values()) == pytest.approx(15.3, abs=0.05)  # "about 15.4" in round figures


def test_training_is_three_forwards_per_row():
    cfg = base()
    assert frames_of(cfg, 64_000) == 199
    one = sum(forward_flops(cfg, 64_000).values())
    assert training_flops(cfg, 64_000, batch_size=2) == pytest.approx(6 * one)
