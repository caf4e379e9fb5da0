"""Embedding layers for audio models (lookup tables, frequency and token embeddings)."""

from w2vkit.embed.layers import (
    FrequencyEmbedding,
    ScaledEmbedding,
    TokenEmbedding,
    one_hot_embedding,
    pitch_to_tokens,
)

__all__ = [
    "FrequencyEmbedding",
    "ScaledEmbedding",
    "TokenEmbedding",
    "one_hot_embedding",
    "pitch_to_tokens",
]
