"""HuBERT's frame targets: k-means clusters of frame features, written in fairseq's `.km` layout.

`fit_kmeans` runs scikit-learn's MiniBatchKMeans with the settings of fairseq's `learn_kmeans.py`
(k-means++ init, batches of 10,000 frames, no reassignment) on a sample of frames that fits in
memory. `nearest_centroid` labels frames; `write_km` writes one line per utterance, the frame
labels as space-separated ints in manifest order, and `write_dictionary` the `dict.km.txt` that
fairseq's HuBERT task reads (one `label count` line per class).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def fit_kmeans(
    frames: np.ndarray,
    num_clusters: int,
    *,
    seed: int,
    max_iter: int = 100,
    batch_size: int = 10000,
) -> np.ndarray:
    """Centroids of `frames` (N, D) -> (K, D) float32; the same seed gives the same centroids."""
    from sklearn.cluster import MiniBatchKMeans  # heavy import, only where clusters are fitted

    if frames.ndim != 2 or len(frames) < num_clusters:
        raise ValueError(
            f"need at least {num_clusters} frames to fit {num_clusters} clusters, got "
            f"{frames.shape[0] if frames.ndim else 0}"
        )
    kmeans = MiniBatchKMeans(
        n_clusters=num_clusters,
        init="k-means++",
        max_iter=max_iter,
        batch_size=batch_size,
        tol=0.0,
        max_no_improvement=100,
        n_init=3,
        reassignment_ratio=0.0,
        compute_labels=False,
        random_state=seed,
    )
    kmeans.fit(frames.astype(np.float32, copy=False))
    return kmeans.cluster_centers_.astype(np.float32)


def nearest_centroid(frames: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Label of each frame: the centroid at the least squared distance. (N, D), (K, D) -> (N,)."""
    frames = frames.astype(np.float32, copy=False)
    # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 is the same for every c of a row.
    distance = (centroids * centroids).sum(1)[None, :] - 2.0 * frames @ centroids.T  # (N, K)
    return distance.argmin(1).astype(np.int64)


def sample_frames(features: Iterable[np.ndarray], max_frames: int, *, seed: int) -> np.ndarray:
    """At most `max_frames` frames drawn uniformly from all frames of `features` (each (T_i, D)),
    by reservoir sampling: memory stays max_frames x D whatever the corpus size. -> (n, D)."""
    rng = np.random.default_rng(seed)
    reservoir: np.ndarray | None = None
    seen = 0
    for x in features:
        if len(x) == 0:
            continue
        if reservoir is None:
            reservoir = np.empty((max_frames, x.shape[1]), dtype=np.float32)
        for row in x:
            if seen < max_frames:
                reservoir[seen] = row
            else:
                slot = int(rng.integers(0, seen + 1))
                if slot < max_frames:
                    reservoir[slot] = row
            seen += 1
    if reservoir is None:
        raise ValueError("no frames to sample")
    return reservoir[: min(seen, max_frames)]


def write_km(path: str | os.PathLike, labels: Iterable[np.ndarray]) -> int:
    """One line per utterance, space-separated labels, in the order given. Returns lines written."""
    lines = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in labels:
            f.write(" ".join(map(str, row.tolist())) + "\n")
            lines += 1
    return lines


def write_dictionary(path: str | os.PathLike, num_clusters: int) -> None:
    """fairseq's `dict.km.txt`: `i 1` for each class i (the count column is unused)."""
    Path(path).write_text("".join(f"{i} 1\n" for i in range(num_clusters)), encoding="utf-8")


def read_km(path: str | os.PathLike) -> list[np.ndarray]:
    """The rows of a `.km` file as int64 arrays; a bad token names its file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                rows.append(np.array(line.split(), dtype=np.int64))
            except ValueError:
                raise ValueError(
                    f"{path}:{number}: labels must be space-separated integers, got {line[:40]!r}"
                ) from None
    return rows


def class_counts(rows: Iterable[np.ndarray], num_classes: int) -> np.ndarray:
    """Frames per class over all rows. -> (num_classes,) int64."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for row in rows:
        counts += np.bincount(row, minlength=num_classes)[:num_classes]
    return counts


__all__ = [
    "class_counts",
    "fit_kmeans",
    "nearest_centroid",
    "read_km",
    "sample_frames",
    "write_dictionary",
    "write_km",
]
