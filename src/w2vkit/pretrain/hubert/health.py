"""HuBERT's health signature: clusters where a few classes hold most frames.

Unbalanced targets make the masked prediction easy in the wrong way: predicting the few big
classes scores well while the encoder learns little about the rest (fairseq issue 3718's
plateau, seen from the label side). The check reads the class histogram of a label file (at
`w2vkit targets` and when a run starts) and the logged `label_ppl` of training batches.
"""

from __future__ import annotations

import numpy as np

from w2vkit.train.diagnostics import Finding

TOP_FRACTION = 0.1
"""The largest 10% of classes..."""
MAX_TOP_SHARE = 0.5
"""...holding more than half of all frames is a finding (balanced k-means on speech: ~20-30%)."""
CODE = "clusters_unbalanced"
CAUSE = (
    "the k-means features separate a few sound classes (often silence or noise) and lump the rest "
    "together: too few frames per cluster in the k-means sample, unnormalised features, or much "
    "silence in the audio"
)
REMEDY = (
    "refit with more frames (`w2vkit targets --max-frames`), trim long silences from the audio, "
    "try another feature layer for iteration 2 (`--layer`), or fewer clusters"
)


def top_share(counts: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Share of all frames held by the `fraction` most frequent classes (at least one class)."""
    total = int(counts.sum())
    if total == 0:
        return 0.0
    top = max(1, int(round(fraction * len(counts))))
    return float(np.sort(counts)[::-1][:top].sum() / total)


def cluster_balance(counts: np.ndarray, *, source: str, step: int = 0) -> Finding | None:
    """A `clusters_unbalanced` finding when the largest classes of `counts` (K,) hold most frames."""
    share = top_share(counts)
    if share <= MAX_TOP_SHARE:
        return None
    top = max(1, int(round(TOP_FRACTION * len(counts))))
    unused = int((counts == 0).sum())
    message = (
        f"{source}: the {top} most frequent of {len(counts)} classes hold {share:.0%} of the "
        f"frames (> {MAX_TOP_SHARE:.0%}); {unused} classes are never used"
    )
    return Finding(CODE, message, CAUSE, REMEDY, step)


__all__ = ["CODE", "MAX_TOP_SHARE", "cluster_balance", "top_share"]
