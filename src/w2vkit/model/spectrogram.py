"""Spectrogram front-end: log-mel or STFT magnitude -> frequency embedding -> 2-D convs -> (B, C, T).

An alternative to the waveform encoder (`feature_extractor.kind: spectrogram`) on the same frame
grid, so masking, quantizer, Transformer and loss are unchanged:

    wav (B, S) -> |STFT| (window R, hop H/2, no centring)       (B, F, T2)  T2 = (S - R) // (H/2) + 1
               -> mel filterbank (logmel) or none (stft), log   (B, F', T2)
               -> per-frame LayerNorm over frequency            (B, 1, F', T2)
               -> Conv2d stride (2, 1) + FrequencyEmbedding     (B, c, F'/2, T2)
               -> Conv2d stride (2, 1)                          (B, c, F'/4, T2)
               -> Conv2d stride (2, 2)                          (B, c, F'/8, T)   T = (S - R) // H + 1
               -> flatten (c, F'/8) -> Linear                   (B, C, T)

R and H are the receptive field and stride of `conv_layers` (400 and 320 samples for BASE), which
still define the frame grid for every consumer (padding masks, labels, extraction): the last conv's
time stride 2 turns the half-stride grid into exactly `output_lengths(S, conv_layers)` frames.
The input normalisation is per frame, but the 3x3 convolutions see +-3 half-stride frames, so the
last two valid frames of a padded row see some padding: crop batches, as for the BASE group norm.

The frequency embedding (Hybrid Demucs) tells the frequency convolutions, which are translation
invariant, which band they look at: speech formants are not shift-invariant in frequency.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from w2vkit.embed.layers import FrequencyEmbedding
from w2vkit.model.config import FeatureExtractorConfig
from w2vkit.model.feature_extractor import frame_geometry

LOG_FLOOR = 1e-6
"""Added to the power before the log, so silence maps to log(1e-6) instead of -inf."""


def hz_to_mel(hz: Tensor) -> Tensor:
    """HTK mel scale (the one HF's and most speech front-ends' log-mel use)."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(num_mels: int, n_fft: int, sample_rate: int) -> Tensor:
    """Triangular filters, equally spaced on the mel scale from 0 Hz to Nyquist. (n_fft//2+1, M)."""
    bin_hz = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (F,)
    # The top edge as a Python float (not a tensor's .item()), so that the bank also builds on
    # the meta device (checkpoint loading checks shapes on a meta model).
    top_mel = 2595.0 * math.log10(1.0 + sample_rate / 2 / 700.0)  # hz_to_mel(Nyquist)
    edges = mel_to_hz(torch.linspace(0.0, top_mel, num_mels + 2)).double()  # (M + 2,)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]  # (M,) each
    rising = (bin_hz[:, None] - lower) / (centre - lower)  # (F, M)
    falling = (upper - bin_hz[:, None]) / (upper - centre)  # (F, M)
    return rising.minimum(falling).clamp(min=0.0).float()


def power_spectrogram(wav: Tensor, window_samples: int, hop_samples: int, n_fft: int) -> Tensor:
    """|STFT|^2 of frames [hop * j, hop * j + window), Hann window, no centring. (B, S) -> (B, F, T)."""
    window = torch.hann_window(window_samples, periodic=True, device=wav.device)
    frames = wav.float().unfold(-1, window_samples, hop_samples) * window  # (B, T, R)
    spectrum = torch.fft.rfft(frames, n=n_fft)  # (B, T, F)
    return spectrum.abs().pow(2).transpose(1, 2)  # (B, F, T)


def log_mel(
    wav: Tensor,
    *,
    num_mels: int = 80,
    sample_rate: int = 16000,
    window_samples: int = 400,
    hop_samples: int = 320,
    n_fft: int = 512,
) -> Tensor:
    """Log-mel energies on the frame grid [hop * t, hop * t + window). (B, S) -> (B, M, T)."""
    power = power_spectrogram(wav, window_samples, hop_samples, n_fft)  # (B, F, T)
    bank = mel_filterbank(num_mels, n_fft, sample_rate).to(power.device)  # (F, M)
    return torch.log(torch.einsum("bft,fm->bmt", power, bank) + LOG_FLOOR)


def half_stride_grid(conv_layers: list[tuple[int, int, int]]) -> tuple[int, int]:
    """(window R, STFT hop H/2) for the frame grid of `conv_layers`, whose frames number
    (S - R) // H + 1 (nested floors of unpadded convolutions collapse to this one formula)."""
    receptive, stride = frame_geometry(conv_layers)
    if stride % 2:
        raise ValueError(
            f"feature_extractor.kind=spectrogram needs an even total stride (it runs the STFT at "
            f"half the frame stride), got {stride} from conv_layers {conv_layers}"
        )
    return receptive, stride // 2


class SpectrogramFeatureExtractor(nn.Module):
    """Spectrogram -> frequency embedding -> strided 2-D convs. Shape: wav (B, S) -> (B, C, T)."""

    def __init__(self, cfg: FeatureExtractorConfig, sample_rate: int = 16000) -> None:
        super().__init__()
        self.cfg = cfg
        self.window_samples, self.hop_samples = half_stride_grid(cfg.conv_layers)
        self.n_fft = 2 ** math.ceil(math.log2(self.window_samples))
        num_bins = self.n_fft // 2 + 1
        if cfg.spectrogram == "logmel":
            self.register_buffer(
                "filterbank",
                mel_filterbank(cfg.num_mels, self.n_fft, sample_rate),
                persistent=False,
            )
            num_bins = cfg.num_mels
        else:
            self.filterbank: Tensor | None = None
        channels = cfg.spectrogram_channels
        self.input_norm = nn.LayerNorm(num_bins)
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(1, channels, 3, stride=(2, 1), padding=1),
                nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1),
                nn.Conv2d(channels, channels, 3, stride=(2, 2), padding=1),
            ]
        )
        freqs_after_first = (num_bins - 1) // 2 + 1
        self.frequency_embedding = FrequencyEmbedding(
            freqs_after_first, channels, weight=cfg.frequency_embedding_weight
        )
        freqs_out = num_bins
        for _ in self.convs:
            freqs_out = (freqs_out - 1) // 2 + 1
        self.projection = nn.Linear(channels * freqs_out, cfg.conv_layers[-1][0])

    def spectrogram(self, wav: Tensor) -> Tensor:
        """(B, S) -> log power (B, F', T2) on the half-stride grid, in fp32."""
        power = power_spectrogram(wav, self.window_samples, self.hop_samples, self.n_fft)
        if self.filterbank is not None:
            power = torch.einsum("bft,fm->bmt", power, self.filterbank)
        return torch.log(power + LOG_FLOOR)

    def forward(self, wav: Tensor) -> Tensor:
        if wav.shape[-1] < self.window_samples:  # no complete frame, as output_lengths says
            return wav.new_zeros(wav.shape[0], self.projection.out_features, 0)
        with torch.autocast(wav.device.type, enabled=False):  # the FFT and the log stay in fp32
            spec = self.spectrogram(wav)  # (B, F', T2)
            spec = self.input_norm(spec.transpose(1, 2)).transpose(1, 2)  # per frame, over F'
        x = spec.unsqueeze(1)  # (B, 1, F', T2)
        x = F.gelu(self.convs[0](x))  # (B, c, F'/2, T2)
        x = self.frequency_embedding(x)
        for conv in self.convs[1:]:
            x = F.gelu(conv(x))  # (B, c, F'/8, T) after the last
        batch, channels, freqs, frames = x.shape
        x = x.reshape(batch, channels * freqs, frames).transpose(1, 2)  # (B, T, c * F'/8)
        return self.projection(x).transpose(1, 2)  # (B, C, T)
