"""data2vec 2.0's light decoder (fairseq `Decoder1d`): a few grouped 1-D convs over time, then a
linear map back to the encoder width, predicting the teacher's targets at every frame. Its block
(`ConvBlock`) is also the layer of data2vec 2.0's positional encoder (`model/transformer.py`).

    x (B, T, D) -> [Conv1d(k, groups) -> LayerNorm over channels (no affine) -> GELU] x L
                   (a residual around each block whose input and output widths match)
                -> Linear(decoder_dim, D)                                      (B, T, D)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from w2vkit.model.dropout import Dropout


class ConvBlock(nn.Module):
    """Grouped same-padded Conv1d -> LayerNorm over channels (no affine) -> GELU. (B, C, T) -> (B, C', T)."""

    def __init__(self, in_dim: int, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_dim, dim, kernel, padding=kernel // 2, groups=groups)
        # An even kernel with padding k/2 yields T+1 frames: drop the last (fairseq SamePad).
        self.trim_last = kernel % 2 == 0

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)  # (B, C, T) -> (B, C', T')
        if self.trim_last:
            y = y[..., :-1]
        y = F.layer_norm(y.transpose(1, 2), (y.shape[1],)).transpose(1, 2)  # over channels
        return F.gelu(y)


class ConvDecoder(nn.Module):
    """Shape: (B, T, D) -> (B, T, D)."""

    def __init__(
        self,
        dim: int,
        *,
        decoder_dim: int,
        kernel: int,
        groups: int,
        num_layers: int,
        input_dropout_prob: float,
    ) -> None:
        super().__init__()
        self.input_dropout = Dropout(input_dropout_prob)
        self.blocks = nn.ModuleList(
            ConvBlock(dim if i == 0 else decoder_dim, decoder_dim, kernel, groups)
            for i in range(num_layers)
        )
        self.proj = nn.Linear(decoder_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_dropout(x).transpose(1, 2)  # (B, T, D) -> (B, D, T)
        for block in self.blocks:
            y = block(x)
            x = y + x if y.shape == x.shape else y
        return self.proj(x.transpose(1, 2))  # (B, T, decoder_dim) -> (B, T, D)


__all__ = ["ConvBlock", "ConvDecoder"]
