"""Spectrogram front-end: frame grid, log-mel against a slow explicit version, frequency embedding
on the frequency axis, training step, checkpoint round trip, refusal by the HF export."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from w2vkit import cli
from w2vkit.config import ConfigError
from w2vkit.interop import ModelRecord, read_model
from w2vkit.interop.hf import hf_config_from_w2vkit
from w2vkit.interop.native import save_w2vkit
from w2vkit.model.config import BASE_CONV_LAYERS, tiny
from w2vkit.model.feature_extractor import output_lengths
from w2vkit.model.spectrogram import half_stride_grid, log_mel, mel_filterbank
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.pretrain.wav2vec2 import pretraining_loss


def spectrogram_config(**fields):
    cfg = tiny()
    return replace(
        cfg, feature_extractor=replace(cfg.feature_extractor, kind="spectrogram", **fields)
    )


@pytest.mark.parametrize("kind", ["logmel", "stft"])
def test_frame_count_equals_the_conv_encoder_for_every_length(kind):
    cfg = spectrogram_config(spectrogram=kind)
    extractor = Wav2Vec2Model(cfg).feature_extractor.eval()
    lengths = list(range(0, 1400)) + [15999, 16000, 16319, 16320, 16321, 48_123]
    with torch.no_grad():
        for num_samples in lengths:
            frames = extractor(torch.zeros(1, num_samples)).shape[-1]
            expected = int(
                output_lengths(torch.tensor(num_samples), cfg.feature_extractor.conv_layers)
            )
            assert frames == expected, num_samples


def test_the_stft_runs_at_half_the_frame_stride_which_must_be_even():
    assert half_stride_grid(BASE_CONV_LAYERS) == (400, 160)
    with pytest.raises(ValueError, match="needs an even total stride .* got 5"):
        half_stride_grid([(8, 5, 5)])


def _slow_log_mel(wav: np.ndarray, num_mels: int, n_fft: int, window: int, hop: int) -> np.ndarray:
    """Frame by frame with numpy's FFT and explicitly evaluated triangular HTK-mel filters."""
    sample_rate = 16000

    def mel(hz):
        return 2595.0 * math.log10(1.0 + hz / 700.0)

    top = mel(sample_rate / 2)
    edges = [700.0 * (10 ** (top * i / (num_mels + 1) / 2595.0) - 1.0) for i in range(num_mels + 2)]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)
    out = []
    for start in range(0, len(wav) - window + 1, hop):
        power = np.abs(np.fft.rfft(wav[start : start + window] * hann, n=n_fft)) ** 2
        row = []
        for m in range(num_mels):
            lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
            total = 0.0
            for k, p in enumerate(power):
                hz = k * sample_rate / n_fft
                weight = max(0.0, min((hz - lo) / (mid - lo), (hi - hz) / (hi - mid)))
                total += weight * p
            row.append(math.log(total + 1e-6))
        out.append(row)
    return np.array(out).T  # (M, T)


def test_log_mel_matches_a_slow_explicit_computation():
    rng = np.random.default_rng(0)
    t = np.arange(2400) / 16000
    wav = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32
    )
    ours = log_mel(torch.from_numpy(wav)[None], num_mels=20, window_samples=400, hop_samples=320)
    slow = _slow_log_mel(wav.astype(np.float64), 20, 512, 400, 320)
    assert ours.shape == (1, 20, 7) == (1, *slow.shape)
    np.testing.assert_allclose(ours[0].numpy(), slow, atol=2e-3, rtol=1e-4)


def test_mel_filters_peak_at_one_on_their_centres_and_cover_the_band():
    bank = mel_filterbank(40, 512, 16000)  # (F, M)
    assert bank.shape == (257, 40)
    assert float(bank.max()) <= 1.0 + 1e-6 and (bank.max(0).values > 0.5).all()
    assert (bank.sum(1)[3:-3] > 0).all()  # every bin but the edges feeds some filter


def test_frequency_embedding_is_added_on_the_frequency_axis():
    model = Wav2Vec2Model(spectrogram_config())
    extractor = model.feature_extractor
    seen = {}
    extractor.frequency_embedding.register_forward_hook(
        lambda module, args, out: seen.update(x=args[0], y=out)
    )
    with torch.no_grad():
        extractor(torch.randn(2, 8000))
    x, y = seen["x"], seen["y"]  # (B, C, F, T)
    table = extractor.frequency_embedding.table.weight  # (num_freqs, C)
    expected = 0.2 * table[: x.shape[2]].t()[None, :, :, None]  # (1, C, F, 1)
    torch.testing.assert_close(y - x, expected.expand_as(x))
    assert x.shape[2] == extractor.frequency_embedding.num_freqs  # frequency, not time, is F


def test_pretraining_step_runs_and_learns_through_the_front_end():
    torch.manual_seed(0)
    model = Wav2Vec2Model(spectrogram_config())
    wav = torch.randn(2, 16000)
    out = model(wav, temperature=2.0, generator=torch.Generator().manual_seed(0))
    terms = pretraining_loss(out)
    (terms.loss / terms.sample_size).backward()
    first_conv = model.feature_extractor.convs[0].weight
    assert first_conv.grad is not None and float(first_conv.grad.abs().sum()) > 0
    assert model.feature_extractor.frequency_embedding.table.embedding.weight.grad is not None


def test_w2vkit_checkpoint_round_trip_and_hf_export_is_refused(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = spectrogram_config(spectrogram="stft")
    model = Wav2Vec2Model(cfg).eval()
    path = tmp_path / "spec.pt"
    save_w2vkit(ModelRecord(cfg=cfg, state_dict=model.state_dict(), normalize=False), path)
    loaded = read_model(path)
    assert loaded.cfg.feature_extractor.kind == "spectrogram"
    assert loaded.cfg.feature_extractor.spectrogram == "stft"
    again = Wav2Vec2Model(loaded.cfg).eval()
    again.load_state_dict(loaded.state_dict)
    wav = torch.randn(1, 8000)
    with torch.no_grad():
        torch.testing.assert_close(
            again.extract_features(wav).context, model.extract_features(wav).context
        )
    with pytest.raises(ConfigError, match="kind='spectrogram' cannot be exported to HF"):
        hf_config_from_w2vkit(cfg)
    code = cli.main(["convert", str(path), str(tmp_path / "hf"), "--to", "hf"])
    assert code == 2
    assert "cannot be exported to HF" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
