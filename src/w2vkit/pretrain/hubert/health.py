"""HuBERT's health signature: clusters where a few classes hold most frames.

Unbalanced targets make the masked prediction easy in the wrong way: predicting the few big
classes scores well while the encoder learns little about the rest (fairseq issue 3718's
plateau, seen from the label side). `HubertMonitor` reads the class histogram of the run's
training labels (once, when the run starts, and in `w2vkit report`) and the logged `label_ppl`
of the training batches; `cluster_balance` checks a histogram alone (`w2vkit targets`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from w2vkit.pretrain.hubert.kmeans import class_counts, read_km
from w2vkit.train.diagnostics import Finding, Monitor

TOP_FRACTION = 0.1
"""The largest 10% of classes..."""
MAX_TOP_SHARE = 0.5
"""...holding more than half of all frames is a finding (balanced k-means on speech: ~20-30%)."""
MIN_BATCH_CLASSES = 0.1
"""A batch label perplexity under 10% of the classes for `label_records` records in a row too."""
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


def unbalanced(counts: np.ndarray, source: str) -> str | None:
    """What is wrong with the class histogram `counts` (K,) from `source`, or None."""
    share = top_share(counts)
    if share <= MAX_TOP_SHARE:
        return None
    top = max(1, int(round(TOP_FRACTION * len(counts))))
    unused = int((counts == 0).sum())
    return (
        f"{source}: the {top} most frequent of {len(counts)} classes hold {share:.0%} of the "
        f"frames (> {MAX_TOP_SHARE:.0%}); {unused} classes are never used"
    )


def cluster_balance(counts: np.ndarray, *, source: str, step: int = 0) -> Finding | None:
    """A `clusters_unbalanced` finding when the largest classes of `counts` hold most frames."""
    message = unbalanced(counts, source)
    return None if message is None else Finding(CODE, message, CAUSE, REMEDY, step)


class HubertMonitor(Monitor):
    """The shared signatures plus `clusters_unbalanced`, from the training label file's
    histogram (`counts`, None when it cannot be read) or a low logged `label_ppl`."""

    ADVICE: ClassVar[dict[str, tuple[str, str]]] = {**Monitor.ADVICE, CODE: (CAUSE, REMEDY)}

    def __init__(
        self, counts: np.ndarray | None, source: str, num_classes: int, *, label_records: int = 3
    ) -> None:
        super().__init__()
        self.file_message = None if counts is None else unbalanced(counts, source)
        self.num_classes = num_classes
        self.label_records = label_records

    def conditions(self, record: dict, step: int) -> dict[str, str | None]:
        return {CODE: self._clusters(record)} | super().conditions(record, step)

    def _clusters(self, record: dict) -> str | None:
        if self.file_message is not None:
            return self.file_message
        floor = MIN_BATCH_CLASSES * self.num_classes
        seen = self._sustained(record, "label_ppl", lambda ppl: ppl < floor, self.label_records)
        if seen is None:
            return None
        return (
            f"the labels of the scored frames use {seen[0]:.1f} of {self.num_classes} classes "
            f"(perplexity) for {seen[1]} log records"
        )


def monitor_for(config: dict) -> HubertMonitor:
    """The monitor of a run's config (config.yaml's dict): its first label set's training file."""
    data = config.get("data") or {}
    hubert = config.get("hubert") or {}
    num_classes = int((hubert.get("num_classes") or [100])[0])
    labels = data.get("labels") or ["km"]
    path = Path(data.get("manifest_dir", "")) / f"{data.get('train_split', 'train')}.{labels[0]}"
    counts = None
    if path.is_file():
        try:
            counts = class_counts(read_km(path), num_classes)
        except ValueError:  # a bad line: the data path names it when the run reads the file
            counts = None
    return HubertMonitor(counts, str(path), num_classes)


__all__ = ["CODE", "HubertMonitor", "cluster_balance", "monitor_for", "top_share"]
