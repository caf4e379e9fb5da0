"""Convolutional waveform encoder f: X -> Z (Sec. 2 of the paper)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from w2vkit.model.config import FeatureExtractorConfig
from w2vkit.model.conv_matmul import conv_as_matmuls


class _GradScale(torch.autograd.Function):
    """Identity forward, gradient times `scale` backward (fairseq `GradMultiply`)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    return x if scale == 1.0 else _GradScale.apply(x, scale)


def output_lengths(num_samples: Tensor, conv_layers: Sequence[tuple[int, int, int]]) -> Tensor:
    """Frames produced from `num_samples` samples: floor((L - k) / s) + 1 per layer, no padding."""
    lengths = num_samples
    for _, kernel, stride in conv_layers:
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


def frame_geometry(conv_layers: Sequence[tuple[int, int, int]]) -> tuple[int, int]:
    """(receptive_field, stride) in samples of one output frame: (400, 320) for wav2vec 2.0."""
    receptive, stride = 1, 1
    for _, kernel, layer_stride in conv_layers:
        receptive += (kernel - 1) * stride
        stride *= layer_stride
    return receptive, stride


def frame_padding_mask(
    padding_mask: Tensor, conv_layers: list[tuple[int, int, int]], num_frames: int
) -> Tensor:
    """Sample-level padding mask (B, S) -> frame-level (B, T); a frame is padded past the valid length."""
    lengths = output_lengths((~padding_mask).sum(-1), conv_layers)  # (B,)
    return torch.arange(num_frames, device=padding_mask.device)[None, :] >= lengths[:, None]


def _fp32_statistics(x: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Arguments of a norm whose mean and variance are accumulated in fp32 (bf16 sums are too coarse).

    CUDA's norm kernels accumulate 16-bit inputs in fp32 themselves: the input goes as it is (no
    fp32 copy of the (B, 512, S/5) first-layer activation, ~1.8 GB of traffic per 15.6 s
    utterance). The CPU's bf16 kernels do not all do that, so there the input is copied to fp32.
    Call under `torch.autocast(enabled=False)`: CUDA autocast would make the copy anyway.
    """
    if x.device.type == "cuda":
        return x, weight.to(x.dtype), bias.to(x.dtype)
    return x.float(), weight.float(), bias.float()


class _ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over channels of a (B, C, T) tensor, statistics in fp32 (`_fp32_statistics`)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.channels_last(x.transpose(1, 2)).transpose(1, 2)

    def channels_last(self, x: Tensor) -> Tensor:
        """The same norm of a (B, T, C) tensor."""
        with torch.autocast(x.device.type, enabled=False):
            y, weight, bias = _fp32_statistics(x, self.weight, self.bias)
            return F.layer_norm(y, self.normalized_shape, weight, bias, self.eps).type_as(x)


class _Fp32GroupNorm(nn.GroupNorm):
    """GroupNorm, statistics in fp32 (`_fp32_statistics`): it normalises each channel over the whole
    utterance, where long sums in bf16 drift."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            y, weight, bias = _fp32_statistics(x, self.weight, self.bias)
            return F.group_norm(y, self.num_groups, weight, bias, self.eps).type_as(x)

    def channels_last(self, x: Tensor) -> Tensor:
        """The same norm of a contiguous (B, T, C) tensor, through torch's channels-last kernel.

        Viewed as (B, C, 1, T) its strides are channels-last ones: no copy either way.
        """
        return self(x.transpose(1, 2).unsqueeze(2)).squeeze(2).transpose(1, 2)


class ConvBlock(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        *,
        bias: bool,
        norm: _ChannelLayerNorm | _Fp32GroupNorm | None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        self.norm = norm

    def forward(self, x: Tensor, *, channels_last: bool) -> Tensor:
        """(B, C, T) -> (B, C', T'), or (B, T, C) -> (B, T', C') through `conv_as_matmuls`."""
        if not channels_last:
            x = self.conv(x)
            return F.gelu(x if self.norm is None else self.norm(x))
        x = conv_as_matmuls(x, self.conv.weight, self.conv.bias, self.conv.stride[0])
        return F.gelu(x if self.norm is None else self.norm.channels_last(x))


class ConvFeatureExtractor(nn.Module):
    """Stack of strided 1-D convolutions. Shape: wav (B, S) -> features (B, C, T).

    `group_norm` mode (BASE) normalises the first layer's channels over time, so a padded batch
    changes the valid frames; `layer_norm` mode (LARGE) normalises every frame on its own.
    """

    def __init__(self, cfg: FeatureExtractorConfig, *, checkpointing: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.checkpointing = checkpointing
        """Training keeps only the waveform and recomputes the stack in the backward (about half
        the activation memory of BASE; the Transformer's `activation_checkpointing` switch)."""
        layers = []
        in_channels = 1
        for i, (channels, kernel, stride) in enumerate(cfg.conv_layers):
            if cfg.norm_mode == "layer_norm":
                norm: _ChannelLayerNorm | _Fp32GroupNorm | None = _ChannelLayerNorm(channels)
            elif i == 0:
                norm = _Fp32GroupNorm(channels, channels)
            else:
                norm = None
            layers.append(
                ConvBlock(in_channels, channels, kernel, stride, bias=cfg.conv_bias, norm=norm)
            )
            in_channels = channels
        self.layers = nn.ModuleList(layers)

    def forward(self, wav: Tensor) -> Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._stack, wav, use_reentrant=False)
        return self._stack(wav)

    def _stack(self, wav: Tensor) -> Tensor:
        # Matmuls in (B, T, C) train 1.15x (BASE) and 2.2x (LARGE, a layer norm per layer)
        # faster than oneDNN's conv on CPU, forward alike (bench/results.md); cuDNN on GPU.
        channels_last = wav.device.type == "cpu"
        x = wav.unsqueeze(-1 if channels_last else 1)  # (B, S, 1) or (B, 1, S)
        for layer in self.layers:
            x = layer(x, channels_last=channels_last)
        return x.transpose(1, 2) if channels_last else x  # (B, C, T), a view on CPU
