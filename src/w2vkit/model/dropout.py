"""Dropout whose CPU path costs half of `torch.nn.functional.dropout`'s.

On CPU, `F.dropout` draws its mask with `bernoulli_`: one Mersenne Twister draw and a float
comparison per element, about 10 ns each, 7.4% of a BASE training update on two cores
(bench/results.md). Here one 64-bit draw gives four mask elements, 16-bit uniform integers
compared with an integer threshold. The dropout probability is rounded to a multiple of 1/65536
(0.1 becomes 0.100006) and the kept values are scaled by the rounded keep probability, so the
output's expectation is still the input. A CPU run with dropout therefore draws other masks than
`F.dropout` would for the same seed. On CUDA, whose fused dropout kernel is fast already, in eval
mode, under `torch.compile` and for a probability that rounds to 0 or 1, this is `F.dropout`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LEVELS = 2**16  # 16-bit uniform integers, four per int64 draw


class _ScaleKept(torch.autograd.Function):
    """x * keep * scale; the backward applies the same mask, saved as bool (1 byte an element)."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.ops.aten.native_dropout_backward(x, keep, scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.ops.aten.native_dropout_backward(grad, keep, ctx.scale), None, None


def keep_mask(shape: torch.Size, prob: float) -> tuple[Tensor, float]:
    """A CPU boolean mask keeping each element with probability 1 - round(prob * 2^16) / 2^16,
    and the scale 1 / that keep probability. Draws from torch's default generator, as `F.dropout`."""
    num = shape.numel()
    # 64 uniform bits a draw (`random_` from -2^63 to the top of int64): each 16-bit quarter is
    # uniform and independent of the others.
    words = torch.empty(-(-num // 4), dtype=torch.int64).random_(-(2**63), None)
    uniform = words.view(torch.int16)[:num].view(shape)  # uniform in [-2^15, 2^15)
    dropped_levels = _dropped_levels(prob)
    keep = uniform >= dropped_levels - _LEVELS // 2
    return keep, _LEVELS / (_LEVELS - dropped_levels)


def _dropped_levels(prob: float) -> int:
    return round(prob * _LEVELS)


def dropout(x: Tensor, prob: float, training: bool) -> Tensor:
    if (
        not training
        or x.device.type != "cpu"
        or not 0 < _dropped_levels(prob) < _LEVELS
        or torch.compiler.is_compiling()  # compiled code fuses F.dropout's mask into its kernels
    ):
        return F.dropout(x, prob, training)
    keep, scale = keep_mask(x.shape, prob)
    return _ScaleKept.apply(x, keep, scale)


class Dropout(nn.Dropout):
    """`nn.Dropout` (an instance of it: code that walks modules to change `p` still finds it) with
    the fast CPU mask above."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return F.dropout(x, self.p, self.training, inplace=True)
        return dropout(x, self.p, self.training)
