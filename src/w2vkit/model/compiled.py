"""`torch.compile` of the model's hot stages, with static shapes (`train.compile=true`).

Each Transformer layer and the conv feature extractor compile whole (`fullgraph=True`): no graph
break, and the 12 or 24 layers share one graph per input shape. Static shapes mean one compilation
per crop length, so pretraining rounds crops down to a multiple of `length_multiple` samples (a
whole number of frame strides): a few length buckets, each compiled once. Masking, negatives and
the quantizer stay eager: their shapes depend on the masks drawn each step.
"""

from __future__ import annotations

import torch
from torch import nn

from w2vkit.model.config import ModelConfig
from w2vkit.model.feature_extractor import ConvFeatureExtractor, frame_geometry
from w2vkit.model.transformer import EncoderLayer

BACKEND = "inductor"
"""torch.compile's backend; tests use "aot_eager" (the same graphs, no C++ code generation)."""
FRAMES_PER_BUCKET = 50
"""Crop lengths are rounded down to multiples of this many frames: 1 s at 50 frames/s, so a run
with 2 to 15.6 s crops compiles at most 15 lengths (fairseq's BASE crops rarely vary that much)."""
MAX_LENGTHS = 64
"""Compiled shapes kept per stage before torch falls back to eager (its default is 8)."""


def length_multiple(cfg: ModelConfig) -> int:
    """Samples per length bucket: FRAMES_PER_BUCKET frame strides (16,000 for wav2vec 2.0)."""
    _, stride = frame_geometry(cfg.feature_extractor.conv_layers)
    return stride * FRAMES_PER_BUCKET


def compile_stages(model: nn.Module) -> int:
    """Compile every `EncoderLayer` and `ConvFeatureExtractor` of `model` in place; how many."""
    dynamo_config = torch._dynamo.config
    # `cache_size_limit`: torch 2.6's name; later ones keep it as an alias of `recompile_limit`.
    dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, MAX_LENGTHS)
    stages = [m for m in model.modules() if isinstance(m, (EncoderLayer, ConvFeatureExtractor))]
    for stage in stages:
        stage.compile(fullgraph=True, dynamic=False, backend=BACKEND)
    return len(stages)
