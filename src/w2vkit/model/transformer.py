"""Context network g: Z -> C, a Transformer with a convolutional relative positional embedding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm
from torch.utils.checkpoint import checkpoint

from w2vkit.model.config import TransformerConfig
from w2vkit.model.dropout import Dropout, dropout
from w2vkit.model.host_rng import host_generator


def _bert_init(linear: nn.Linear) -> nn.Linear:
    # fairseq `init_bert_params`, applied to the encoder only.
    nn.init.normal_(linear.weight, mean=0.0, std=0.02)
    nn.init.zeros_(linear.bias)
    return linear


class ConvPositionalEmbedding(nn.Module):
    """Weight-normed grouped conv over time, same-padded. Shape: (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (kernel * dim)))
        assert conv.bias is not None  # Conv1d's default bias=True
        nn.init.zeros_(conv.bias)
        # Normalise per kernel tap (dim=2), as fairseq and HF do; the g vector has shape (1, 1, K).
        self.conv = weight_norm(conv, name="weight", dim=2)
        # An even kernel with padding k/2 yields T+1 frames: drop the last to keep T (fairseq SamePad).
        self.trim_last = kernel % 2 == 0

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x.transpose(1, 2))  # (B, T, D) -> (B, D, T')
        if self.trim_last:
            y = y[..., :-1]
        return F.gelu(y).transpose(1, 2)  # (B, D, T) -> (B, T, D)


def _explicit_attention(
    q: Tensor, k: Tensor, v: Tensor, attend: Tensor | None, dropout_prob: float
) -> Tensor:
    """SDPA's math, written out for training with attention dropout on CPU: there SDPA has no
    fused kernel that drops weights and falls back to this same math (in fp32, as here, also under
    autocast) with `bernoulli_` masks; `dropout` draws them at half the cost.
    Shapes: q, k, v (B, H, T, D/H), attend (B, 1, 1, T) True = attend."""
    dtype = v.dtype
    q, k, v = q.float(), k.float(), v.float()
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, T, T)
    if attend is not None:
        scores = scores.masked_fill(~attend, float("-inf"))
    weights = dropout(scores.softmax(-1), dropout_prob, training=True)
    return (weights @ v).to(dtype)  # (B, H, T, D/H)


class SelfAttention(nn.Module):
    """Multi-head attention through `scaled_dot_product_attention` (flash/efficient kernels on GPU)."""

    def __init__(self, dim: int, num_heads: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout_prob = dropout_prob
        self.q_proj = _bert_init(nn.Linear(dim, dim))
        self.k_proj = _bert_init(nn.Linear(dim, dim))
        self.v_proj = _bert_init(nn.Linear(dim, dim))
        self.out_proj = _bert_init(nn.Linear(dim, dim))

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        batch, frames, dim = x.shape

        def heads(t: Tensor) -> Tensor:
            # (B, T, D) -> (B, H, T, D/H)
            return t.view(batch, frames, self.num_heads, -1).transpose(1, 2)

        # SDPA's boolean mask is True = attend; None keeps the flash kernel eligible.
        attend = None if padding_mask is None else ~padding_mask[:, None, None, :]  # (B, 1, 1, T)
        # One GEMM for q, k and v (one weight cast under autocast, one kernel) from the three
        # projections, which stay separate parameters: state-dict keys, HF and fairseq names and
        # per-matrix init are unchanged, and concatenating 3 D^2 weights per call costs little
        # next to the (B, T, D) activations.
        weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        q, k, v = (heads(t) for t in F.linear(x, weight, bias).chunk(3, dim=-1))  # (B, T, 3D)
        cpu_dropout = self.training and self.dropout_prob > 0 and x.device.type == "cpu"
        if cpu_dropout and not torch.compiler.is_compiling():
            y = _explicit_attention(q, k, v, attend, self.dropout_prob)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attend, dropout_p=self.dropout_prob if self.training else 0.0
            )
        # (B, H, T, D/H) -> (B, T, D)
        return self.out_proj(y.transpose(1, 2).reshape(batch, frames, dim))


class EncoderLayer(nn.Module):
    """One Transformer block, post-LN (BASE) or pre-LN (LARGE)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.layer_norm_first = cfg.layer_norm_first
        self.attention = SelfAttention(cfg.model_dim, cfg.num_heads, cfg.attention_dropout_prob)
        self.attention_norm = nn.LayerNorm(cfg.model_dim)
        self.fc1 = _bert_init(nn.Linear(cfg.model_dim, cfg.ffn_dim))
        self.fc2 = _bert_init(nn.Linear(cfg.ffn_dim, cfg.model_dim))
        self.ffn_norm = nn.LayerNorm(cfg.model_dim)
        self.dropout = Dropout(cfg.dropout_prob)
        self.activation_dropout = Dropout(cfg.activation_dropout_prob)

    def _ffn(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.activation_dropout(F.gelu(self.fc1(x)))))

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(self.attention(self.attention_norm(x), padding_mask))
            return x + self._ffn(self.ffn_norm(x))
        x = self.attention_norm(x + self.dropout(self.attention(x, padding_mask)))
        return self.ffn_norm(x + self._ffn(x))


class TransformerEncoder(nn.Module):
    """Positional conv, then L layers with LayerDrop. Shape: x (B, T, D) -> hidden states (B, T, D)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pos_conv = ConvPositionalEmbedding(
            cfg.model_dim, cfg.pos_conv_kernel, cfg.pos_conv_groups
        )
        self.norm = nn.LayerNorm(cfg.model_dim)
        self.dropout = Dropout(cfg.dropout_prob)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        *,
        num_layers: int | None = None,
        generator: torch.Generator | None = None,
    ) -> list[Tensor]:
        """Returns [encoder input, output of each layer run]; `num_layers` stops early.

        The pre-LN final LayerNorm is applied to the last state when every layer runs.
        """
        num_layers = len(self.layers) if num_layers is None else num_layers
        if not 0 <= num_layers <= len(self.layers):
            raise ValueError(f"num_layers must be in [0, {len(self.layers)}], got {num_layers}")
        frames = x.shape[1]
        if padding_mask is not None:
            # padded frames must not leak through the conv
            x = x.masked_fill(padding_mask[..., None], 0.0)
        x = x + self.pos_conv(x)
        if not self.cfg.layer_norm_first:
            x = self.norm(x)
        x, padding_mask = self._pad_to_multiple(x, padding_mask)
        x = self.dropout(x)
        states = [x]
        drop = self._layers_to_drop(generator)
        for i, layer in enumerate(self.layers[:num_layers]):
            if drop is not None and drop[i]:
                continue
            x = self._run_layer(layer, x, padding_mask)
            states.append(x)
        if self.cfg.layer_norm_first and num_layers == len(self.layers):
            states[-1] = self.norm(states[-1])
        return [state[:, :frames] for state in states]

    def _run_layer(self, layer: nn.Module, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        if self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled():
            # The recomputation replays the forward's RNG state: the same dropout masks.
            return checkpoint(layer, x, padding_mask, use_reentrant=False)
        return layer(x, padding_mask)

    def _pad_to_multiple(
        self, x: Tensor, padding_mask: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        # fairseq pads T to `required_seq_len_multiple` (kernel-friendly shapes) and masks the pad.
        # Only a batch that is padded already: padding an unpadded one would add an attention mask
        # for the same result, slower on CPU and off SDPA's flash kernel on GPU.
        extra = -x.shape[1] % self.cfg.required_seq_len_multiple
        if extra == 0 or padding_mask is None:
            return x, padding_mask
        padding_mask = F.pad(padding_mask, (0, extra), value=True)  # (B, T) -> (B, T + extra)
        return F.pad(x, (0, 0, 0, extra)), padding_mask

    def _layers_to_drop(self, generator: torch.Generator | None) -> list[bool] | None:
        if not self.training or self.cfg.layerdrop_prob == 0.0:
            return None
        # Drawn on the host: which layers run is a host decision, and a device draw read here
        # would be a sync per step on GPU.
        draws = torch.rand(len(self.layers), generator=host_generator(generator))
        return (draws < self.cfg.layerdrop_prob).tolist()
