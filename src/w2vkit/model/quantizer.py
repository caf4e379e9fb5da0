"""Gumbel-softmax product quantizer (Sec. 2 and Eq. 1; fairseq `GumbelVectorQuantizer`).

The temperature is an argument of `forward`: its schedule belongs to the objective that trains the
quantizer (`w2vkit.pretrain.schedule.gumbel_temperature`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


def perplexity(probs: Tensor) -> Tensor:
    """Sum over groups of exp(entropy) of the mean distribution. probs (N, G, V) -> scalar."""
    mean = probs.mean(0)  # (G, V)
    return torch.exp(-(mean * torch.log(mean + 1e-7)).sum(-1)).sum()


def _one_hot(codes: Tensor, like: Tensor) -> Tensor:
    """codes (N, G) -> one-hot (N, G, V) shaped and typed like `like`.

    A scatter, not `F.one_hot`: that one checks the codes' range on the host, a device sync.
    """
    return torch.zeros_like(like).scatter_(-1, codes.unsqueeze(-1), 1.0)


@dataclass
class QuantizerOutput:
    quantized: Tensor
    """(N, code_dim): one codevector per group, concatenated."""
    codes: Tensor
    """(N, G) entry chosen per group: argmax in eval, the Gumbel-noisy argmax in training."""
    prob_perplexity: Tensor
    """Perplexity of the mean softmax (no noise): the diversity loss uses it."""
    code_perplexity: Tensor
    """Perplexity of the hard code histogram (log only)."""


def gumbel_noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Gumbel(0, 1) noise shaped like `like`, from `generator` (a seam: parity tests replay it)."""
    return -torch.empty_like(like).exponential_(generator=generator).log()


class GumbelVectorQuantizer(nn.Module):
    """G codebooks of V entries; training picks entries by straight-through hard Gumbel-softmax.

    Shape: x (N, C) -> quantized (N, code_dim), code_dim = G * entry_dim.
    """

    def __init__(self, input_dim: int, num_groups: int, num_entries: int, code_dim: int) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.num_entries = num_entries
        self.entry_dim = code_dim // num_groups
        self.weight_proj = nn.Linear(input_dim, num_groups * num_entries)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        self.codevectors = nn.Parameter(torch.rand(1, num_groups * num_entries, self.entry_dim))

    @property
    def num_vars(self) -> int:
        return self.num_groups * self.num_entries

    def forward(
        self, x: Tensor, temperature: float, generator: torch.Generator | None = None
    ) -> QuantizerOutput:
        num_frames = x.shape[0]
        # fp32 logits: softmax at temperature 0.1-0.5 in bf16 flips near-ties.
        # (N, G, V)
        logits = self.weight_proj(x).float().view(num_frames, self.num_groups, self.num_entries)
        codes = logits.argmax(-1)  # (N, G)
        hard = _one_hot(codes, logits)  # (N, G, V)
        with torch.no_grad():
            code_perplexity = perplexity(hard)
        prob_perplexity = perplexity(logits.softmax(-1))
        if self.training:
            # Straight-through: forward uses the hard one-hot of the noisy logits, backward the soft.
            noise = gumbel_noise(logits, generator)
            soft = ((logits + noise) / temperature).softmax(-1)
            codes = soft.argmax(-1)
            weights = _one_hot(codes, soft) - soft.detach() + soft
        else:
            weights = hard
        return QuantizerOutput(
            quantized=self._lookup(weights),
            codes=codes,
            prob_perplexity=prob_perplexity,
            code_perplexity=code_perplexity,
        )

    def codevectors_for(self, codes: Tensor) -> Tensor:
        """Entry ids (..., G) -> concatenated codevectors (..., code_dim), as an exact gather."""
        # (G, V, d)
        table = self.codevectors.view(self.num_groups, self.num_entries, self.entry_dim)
        group = torch.arange(self.num_groups, device=codes.device)
        return table[group, codes].flatten(-2)  # (..., G, d) -> (..., G*d)

    def _lookup(self, weights: Tensor) -> Tensor:
        # (G, V, d)
        table = self.codevectors.view(self.num_groups, self.num_entries, self.entry_dim)
        quantized = torch.einsum("ngv,gvd->ngd", weights.to(table.dtype), table)  # (N, G, d)
        return quantized.flatten(1)  # (N, G*d)
