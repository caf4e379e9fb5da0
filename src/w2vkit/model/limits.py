"""`min_input_samples`: the shortest waveform a model can be trained on.

Shorter input fails inside the model, at a random step: below one receptive field the conv
stack yields no frame, and a few frames more the span masking covers the whole sequence ("the
entire sequence is masked"). The data pipeline treats a decode shorter than this as a failed
file and replaces it, so such a file never stops a run.
"""

from __future__ import annotations

import math

from w2vkit.model.config import ModelConfig
from w2vkit.model.feature_extractor import frame_geometry


def min_input_samples(cfg: ModelConfig) -> int:
    """Samples of the shortest row `cfg` trains on without a masking or conv error."""
    receptive, stride = frame_geometry(cfg.feature_extractor.conv_layers)
    return receptive + (min_frames(cfg) - 1) * stride


def min_frames(cfg: ModelConfig) -> int:
    """Frames a row needs so that time masking can never cover all of it.

    Static spans of length L start in [0, T - L - 1] once there are more candidate starts than
    spans, so the last frame stays unmasked: T - L > num_spans, num_spans at most
    max(min_spans, floor(prob * T / L) + 1). Other span distributions have no such guarantee;
    there the masked frames are bounded by their sum, num_spans x the longest likely span.
    """
    masking = cfg.masking
    if masking.time_prob == 0:
        return 1
    span = masking.time_span_frames
    if masking.time_span_selection == "uniform":
        span = 2 * span
    for frames in range(1, 1 << 20):
        num_spans = max(masking.time_min_spans, math.floor(masking.time_prob * frames / span) + 1)
        free = frames - span > num_spans
        if masking.time_span_selection != "static" or masking.time_no_overlap:
            free = frames > num_spans * span
        if free:
            return frames
    raise ValueError(f"time masking (prob {masking.time_prob}) masks every row whatever its length")


__all__ = ["min_frames", "min_input_samples"]
