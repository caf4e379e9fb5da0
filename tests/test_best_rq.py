"""BEST-RQ pieces against hand-computed values and slow numpy versions: frame stacking, the random
projection quantizer's nearest neighbours, the input masking, the loss and code statistics, and the
model on both front-ends."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from w2vkit.config import ConfigError
from w2vkit.model.best_rq import BestRQConfig, BestRQModel, masked_samples
from w2vkit.model.config import tiny
from w2vkit.model.normalize import instance_norm_over_time
from w2vkit.model.random_projection import RandomProjectionQuantizer, stack_frames, stacked_log_mel
from w2vkit.model.spectrogram import log_mel
from w2vkit.pretrain.best_rq import best_rq_loss, best_rq_objective, code_usage

SMALL = BestRQConfig(num_mels=16, codebook_dim=8, codebook_size=32, num_codebooks=2)


def test_stack_frames_puts_consecutive_sub_frames_side_by_side():
    features = torch.arange(2 * 7, dtype=torch.float32).view(1, 2, 7)  # channel m, frame j: 7m + j
    stacked = stack_frames(features, 2, 3)
    # Frame t = [channel 0 and 1 of sub-frame 2t, channel 0 and 1 of sub-frame 2t + 1].
    want = [[0, 7, 1, 8], [2, 9, 3, 10], [4, 11, 5, 12]]
    assert stacked.tolist() == [want]


def test_stacked_log_mel_is_the_10ms_log_mel_two_frames_per_20ms_frame():
    torch.manual_seed(0)
    wav = torch.randn(2, 8000)
    frames = (8000 - 400) // 320 + 1
    got = stacked_log_mel(wav, tiny().feature_extractor.conv_layers, frames, num_mels=16)
    assert got.shape == (2, frames, 32)
    padded = torch.nn.functional.pad(wav, (0, 160))
    ten_ms = log_mel(padded, num_mels=16, window_samples=400, hop_samples=160, n_fft=512)
    for t in (0, 5, frames - 1):
        torch.testing.assert_close(got[:, t, :16], ten_ms[:, :, 2 * t])
        torch.testing.assert_close(got[:, t, 16:], ten_ms[:, :, 2 * t + 1])
    # Sub-frame 2t starts at sample 320 t: the 10-ms frame of the same samples without the padding.
    torch.testing.assert_close(got[:, 3, :16], log_mel(wav[:, 960:1360], num_mels=16)[:, :, 0])


def test_quantizer_is_the_nearest_unit_codebook_vector_by_a_slow_numpy_search():
    torch.manual_seed(0)
    quantizer = RandomProjectionQuantizer(24, 8, 32, 3)
    bound = math.sqrt(6 / (24 + 8))  # Xavier uniform
    assert float(quantizer.projection.abs().max()) <= bound
    np.testing.assert_allclose(quantizer.codebooks.norm(dim=-1).numpy(), 1.0, rtol=1e-6)
    x = torch.randn(2, 9, 24)
    codes = quantizer(x)
    assert codes.shape == (2, 9, 3)
    proj = quantizer.projection.double().numpy()
    books = quantizer.codebooks.double().numpy()
    for b in range(2):
        for t in range(9):
            for n in range(3):
                v = x[b, t].double().numpy() @ proj[n]
                v /= np.linalg.norm(v)
                distances = [np.linalg.norm(v - code) for code in books[n]]
                assert codes[b, t, n] == int(np.argmin(distances))
    assert not any(True for _ in quantizer.parameters())  # nothing to learn


def test_masked_samples_cover_each_masked_frames_receptive_field():
    conv_layers = tiny().feature_extractor.conv_layers
    time_mask = torch.zeros(2, 24, dtype=torch.bool)
    time_mask[0, 3] = time_mask[1, 22:24] = True
    got = masked_samples(time_mask, conv_layers, 8000)
    want = torch.zeros(2, 8000, dtype=torch.bool)
    for b, t in zip(*time_mask.nonzero(as_tuple=True), strict=True):
        want[b, 320 * t : 320 * t + 400] = True
    assert torch.equal(got, want)


def test_loss_accuracy_and_code_usage_against_hand_computation():
    torch.manual_seed(0)
    logits, targets = torch.randn(5, 2, 7), torch.randint(7, (5, 2))
    slow = 0.0
    for i in range(5):
        for c in range(2):
            row = logits[i, c].double().numpy()
            slow += (np.log(np.exp(row).sum()) - row[targets[i, c]]) / 2
    assert best_rq_loss(logits, targets).item() == pytest.approx(slow, rel=1e-6)
    perplexity, top = code_usage(torch.tensor([[0], [0], [1], [2]]), 4)
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert perplexity.item() == pytest.approx(math.exp(entropy), rel=1e-6)
    assert top.item() == pytest.approx(0.5)


@pytest.mark.parametrize("kind", ["conv", "spectrogram"])
def test_model_targets_come_from_the_clean_audio_and_the_encoder_sees_noise(kind):
    torch.manual_seed(0)
    cfg = tiny()
    cfg = replace(cfg, feature_extractor=replace(cfg.feature_extractor, kind=kind))
    model = BestRQModel(cfg, SMALL).eval()
    wav = torch.randn(2, 8000)
    time_mask = torch.zeros(2, 24, dtype=torch.bool)
    time_mask[0, 4:9] = time_mask[1, 12:17] = True
    out = model(wav, time_mask=time_mask, generator=torch.Generator().manual_seed(1))
    assert out.logits.shape == (10, 2, 32) and out.targets.shape == (10, 2)
    mel = stacked_log_mel(wav, cfg.feature_extractor.conv_layers, 24, num_mels=16)
    codes = model.rq(instance_norm_over_time(mel, None))
    assert torch.equal(out.targets, codes[time_mask])
    # Other audio under the masked frames: other targets, but the encoder's input is the same noise.
    changed = wav.clone()
    changed[masked_samples(time_mask, cfg.feature_extractor.conv_layers, 8000)] = 5.0
    again = model(changed, time_mask=time_mask, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again.logits, out.logits)


def test_objective_step_logs_accuracy_and_code_usage():
    torch.manual_seed(0)
    model = BestRQModel(tiny(), SMALL)

    class _Batch:
        wav = torch.randn(2, 16000)
        padding_mask = None

    out = best_rq_objective().step(model, _Batch(), 0, torch.Generator().manual_seed(0))
    assert out.loss.item() == pytest.approx(out.sample_size * math.log(32), rel=0.2)
    assert out.sums["count"] == 2 * out.sample_size
    assert 1.0 <= out.means["code_perplexity"].item() <= 32
    out.loss.backward()
    assert model.masker.mask_embedding.grad is None
    assert model.rq_head.weight.grad is not None


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="best_rq.stack"):
        BestRQModel(tiny(), replace(SMALL, stack=3))
    with pytest.raises(ConfigError, match="best_rq.codebook_size"):
        BestRQConfig(codebook_size=1)
