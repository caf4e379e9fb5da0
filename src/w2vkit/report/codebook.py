"""Codebook usage: how often each quantizer entry is chosen over real audio.

One pass over the audio with the model in eval mode: the conv features (after `feature_norm`, what
the quantizer sees in training) go through the quantizer, whose eval-mode codes are the argmax
entry of each group (no Gumbel noise). A healthy codebook spreads frames over many entries; a
collapsed one puts nearly all frames on a few.
"""

from __future__ import annotations

import numpy as np
import torch

from w2vkit.data.dataset import AudioDataset
from w2vkit.model.wav2vec2 import Wav2Vec2Model


@torch.no_grad()
def codebook_usage(
    model: Wav2Vec2Model, dataset: AudioDataset, max_items: int | None = None
) -> np.ndarray:
    """Frames per entry of each codebook. Shape: -> (G, V) int64."""
    if model.quantizer is None:
        raise ValueError("the model has no quantizer (quantizer.quantize_targets is false)")
    model.eval()
    device = next(model.parameters()).device
    q = model.quantizer
    counts = torch.zeros(q.num_groups, q.num_entries, dtype=torch.int64)
    num_items = len(dataset) if max_items is None else min(max_items, len(dataset))
    for i in range(num_items):
        wav = dataset.load(i)  # (S,)
        if wav is None:
            continue
        features = model.extract_features(wav.to(device)[None], layer=0).features[0]  # (T, C)
        if features.shape[0] == 0:
            continue
        codes = q(features, temperature=1.0).codes.cpu()  # (T, G), argmax in eval mode
        for g in range(q.num_groups):
            counts[g] += torch.bincount(codes[:, g], minlength=q.num_entries)
    return counts.numpy()


def usage_perplexity(counts: np.ndarray) -> float:
    """Sum over groups of exp(entropy) of the entry histogram (fairseq's code perplexity)."""
    probs = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)  # (G, V)
    entropy = -(probs * np.log(np.where(probs > 0, probs, 1.0))).sum(axis=1)
    return float(np.exp(entropy).sum())
