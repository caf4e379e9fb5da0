"""A strided 1-D convolution of a channels-last (B, T, C) input, written as matrix products.

Output frame t of a kernel of k taps and stride s reads input frames s t .. s t + k - 1. Taps in
whole groups of s make one product each, over x viewed as rows of s frames from the group's first
tap (a view, no copy); taps left over (k not a multiple of s) make one product each, over every
s-th frame. Each product is a 2-D GEMM per utterance that accumulates into the output in place,
and the backward writes the same way into the input's gradient, so nothing is copied, padded
or transposed. On CPU this trains the BASE conv encoder 1.15x and LARGE's (a layer norm per
layer, two transposes each in the (B, C, T) layout) 2.2x faster than oneDNN's convolution
(bench/results.md), whose backward runs at two thirds of matmul speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _windows(x: Tensor, kernel: int, stride: int, num_out: int) -> list[tuple[Tensor, slice]]:
    """Views of one utterance x (T, C), each (T', w C) for the w taps it covers (s, or 1 for a
    left-over tap), and the rows of the (k C, O) tap matrix each multiplies. The same views of
    the input's gradient receive the backward."""
    channels = x.shape[-1]
    whole = kernel - kernel % stride  # taps in whole groups of s
    groups = [
        (x[first : first + stride * num_out].view(num_out, stride * channels), first)
        for first in range(0, whole, stride)
    ]
    every = [
        (x[tap : tap + stride * (num_out - 1) + 1 : stride], tap) for tap in range(whole, kernel)
    ]
    return [
        (view, slice(first * channels, first * channels + view.shape[1]))
        for view, first in groups + every
    ]


class _ConvAsMatmuls(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: int) -> Tensor:
        x = x.contiguous()
        batch, frames, channels = x.shape
        out_channels, _, kernel = weight.shape
        num_out = (frames - kernel) // stride + 1
        taps = weight.permute(2, 1, 0).reshape(kernel * channels, out_channels)  # (k C, O)
        y = x.new_empty(batch, num_out, out_channels)
        for b in range(batch):
            (view, rows), *rest = _windows(x[b], kernel, stride, num_out)
            torch.mm(view, taps[rows], out=y[b])
            for view, rows in rest:
                y[b].addmm_(view, taps[rows])
        ctx.save_for_backward(x, taps)
        ctx.stride = stride
        return y  # (B, T', O)

    @staticmethod
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, taps = ctx.saved_tensors
        grad_y = grad_y.contiguous()  # (B, T', O)
        kernel, num_out = taps.shape[0] // x.shape[-1], grad_y.shape[1]
        want_x, want_w = ctx.needs_input_grad[:2]
        grad_x = torch.zeros_like(x) if want_x else None
        grad_taps = torch.zeros_like(taps) if want_w else None
        for b in range(x.shape[0]):
            if grad_x is not None:
                for view, rows in _windows(grad_x[b], kernel, ctx.stride, num_out):
                    view.addmm_(grad_y[b], taps[rows].t())
            if grad_taps is not None:
                for view, rows in _windows(x[b], kernel, ctx.stride, num_out):
                    grad_taps[rows].addmm_(view.t(), grad_y[b])
        grad_w = None
        if grad_taps is not None:  # (k C, O) -> (O, C, k)
            grad_w = grad_taps.view(kernel, x.shape[-1], -1).permute(2, 1, 0)
        return grad_x, grad_w, None


def conv_as_matmuls(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:
    """`F.conv1d(x.transpose(1, 2), weight, bias, stride).transpose(1, 2)`, no padding.

    Shapes: x (B, T, C), weight (O, C, k), bias (O,) -> (B, T', O), T' = (T - k) // s + 1.
    """
    num_out = (x.shape[1] - weight.shape[-1]) // stride + 1
    if num_out <= 0:  # no complete window: let F.conv1d say so, as the conv path does
        return F.conv1d(x.transpose(1, 2), weight, bias, stride).transpose(1, 2)
    if torch.is_autocast_enabled(x.device.type):
        # mm(out=) and addmm_ are not autocast ops: cast as autocast casts F.conv1d's inputs
        # (fp32 ones to the autocast dtype, others left alone).
        dtype = torch.get_autocast_dtype(x.device.type)

        def cast(t: Tensor) -> Tensor:
            return t.to(dtype) if t.dtype == torch.float32 else t

        x, weight = cast(x), cast(weight)
        bias = None if bias is None else cast(bias)
    y = _ConvAsMatmuls.apply(x, weight, stride)
    return y if bias is None else y + bias
