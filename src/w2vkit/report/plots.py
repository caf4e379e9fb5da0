"""The report's figures, each written to a PNG (matplotlib `Figure`, no pyplot: headless, no global state).

Training curves read train_log.jsonl records (fairseq keys: `loss_0` contrastive, `loss_1`
diversity, `loss_2` feature penalty, all in bits per masked frame; `split` is train or valid).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

DPI = 100


@dataclass(frozen=True)
class Curve:
    """One panel: `keys` of the records against num_updates."""

    name: str
    """File stem and anchor."""
    title: str
    keys: tuple[str, ...]
    ylabel: str
    log_y: bool = False


MODULES = (
    "feature_extractor", "feature_norm", "feature_projection", "masker", "encoder", "quantizer",
    "target_proj", "context_proj",
)  # fmt: skip
"""The wav2vec 2.0 model's top-level modules with parameters (`grad_norm/<module>` keys)."""

TRAIN_CURVES = (
    Curve(
        "loss_parts",
        "loss and its parts (train)",
        ("loss", "loss_0", "loss_1", "loss_2"),
        "bits per masked frame",
    ),
    Curve("accuracy", "contrastive accuracy", ("accuracy",), "fraction of masked frames"),
    Curve(
        "perplexity", "codebook perplexity", ("prob_perplexity", "code_perplexity"), "perplexity"
    ),
    Curve("temperature", "Gumbel temperature", ("temp",), "temperature"),
    Curve("learning_rate", "learning rate", ("lr",), "lr"),
    Curve("gradient_norm", "gradient norm (before clipping)", ("gnorm",), "L2 norm", log_y=True),
    # train.diagnostics=true (docs/convergence.md): why a run sits on the plateau
    Curve(
        "module_gradient_norms",
        "gradient norm per module (train.diagnostics)",
        tuple(f"grad_norm/{m}" for m in MODULES),
        "L2 norm",
        log_y=True,
    ),
    Curve(
        "logit_spread",
        "contrastive logits: positive vs negatives (train.diagnostics)",
        ("logit_pos", "logit_neg_max", "logit_neg"),
        "cosine / logit temperature",
    ),
    Curve("feature_rms", "RMS of the features the quantizer sees", ("feature_rms",), "RMS"),
)
VALID_CURVES = (
    Curve("valid_loss", "validation loss", ("loss", "loss_0"), "bits per masked frame"),
    Curve("valid_accuracy", "validation accuracy", ("accuracy",), "fraction of masked frames"),
)
LEGEND = {
    "loss": "total",
    "loss_0": "contrastive",
    "loss_1": "diversity (weighted)",
    "loss_2": "feature penalty (weighted)",
    "logit_pos": "positive",
    "logit_neg_max": "largest negative (row mean)",
    "logit_neg": "negatives (mean)",
    **{f"grad_norm/{m}": m for m in MODULES},
}


def _series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    points = [
        (r["num_updates"], r[key])
        for r in records
        if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
    ]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curve(
    curve: Curve,
    records: Sequence[dict],
    path: str | os.PathLike,
    guides: dict[str, float] | None = None,
) -> bool:
    """Draw `curve` from `records`; False (nothing written) if no record has any of its keys.

    `guides`: labelled horizontal reference lines (e.g. chance loss, perplexity limits).
    """
    series = {key: _series(records, key) for key in curve.keys}
    series = {key: xy for key, xy in series.items() if xy[0]}
    if not series:
        return False
    fig = Figure(figsize=(6.0, 3.2), layout="constrained")
    ax = fig.subplots()
    for key, (steps, values) in series.items():
        ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=LEGEND.get(key, key))
    for label, value in (guides or {}).items():
        ax.axhline(value, color="gray", linestyle=":", linewidth=1)
        ax.annotate(
            label,
            (0.01, value),
            xycoords=("axes fraction", "data"),
            fontsize="x-small",
            color="dimgray",
            va="bottom",
        )
    if curve.log_y and all(v > 0 for _, values in series.values() for v in values):
        ax.set_yscale("log")
    else:
        ax.ticklabel_format(
            axis="y", useOffset=False
        )  # a slowly decaying temperature stays readable
    ax.set(xlabel="update", ylabel=curve.ylabel, title=curve.title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=DPI)
    return True


def plot_codebook(counts: np.ndarray, path: str | os.PathLike, perplexity: float) -> None:
    """Frames per entry, one panel per codebook, entries sorted by use. counts (G, V)."""
    groups, entries = counts.shape
    fig = Figure(figsize=(6.0, 1.0 + 1.8 * groups), layout="constrained")
    axes = np.atleast_1d(fig.subplots(groups, 1, squeeze=False)[:, 0])
    for g, ax in enumerate(axes):
        ordered = np.sort(counts[g])[::-1]
        used = int((counts[g] > 0).sum())
        ax.bar(np.arange(entries), ordered, width=1.0, color="tab:purple")
        ax.set(ylabel="frames", title=f"codebook {g}: {used} of {entries} entries used")
        ax.set_xlim(-0.5, entries - 0.5)
    axes[-1].set_xlabel("entry, most used first")
    fig.suptitle(
        f"codebook usage on validation audio (perplexity {perplexity:.1f} of {groups * entries})"
    )
    fig.savefig(path, dpi=DPI)


def plot_probe_bars(
    rows: Sequence[tuple[str, float, float]], chance: float, title: str, path: str | os.PathLike
) -> None:
    """Grouped bars of (name, accuracy, macro-F1) per feature source, with the chance line."""
    fig = Figure(figsize=(6.0, 3.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r[1] for r in rows], width=0.4, label="accuracy", color="tab:blue")
    ax.bar(x + 0.2, [r[2] for r in rows], width=0.4, label="macro-F1", color="tab:orange")
    ax.axhline(chance, color="tab:red", linestyle=":", label="chance (accuracy)")
    ax.set_xticks(x, [r[0] for r in rows], fontsize="small")
    ax.set(ylim=(0, 1.02), ylabel="test score", title=title)
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=DPI)


def plot_pca(
    vectors: np.ndarray, labels: Sequence[str], title: str, path: str | os.PathLike
) -> None:
    """2-D PCA of (N, D) vectors, one colour per label."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    pca = PCA(n_components=2, random_state=0)
    points = pca.fit_transform(StandardScaler().fit_transform(vectors))  # (N, 2)
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.subplots()
    names = sorted(set(labels))
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    for i, name in enumerate(names):
        chosen = np.array([label == name for label in labels])
        ax.scatter(
            points[chosen, 0], points[chosen, 1], s=14, label=name, color=palette(i % palette.N)
        )
    ratio = pca.explained_variance_ratio_
    ax.set(
        xlabel=f"PC 1 ({100 * ratio[0]:.0f}% of variance)",
        ylabel=f"PC 2 ({100 * ratio[1]:.0f}%)",
        title=title,
    )
    if len(names) <= 20:
        ax.legend(fontsize="x-small", ncols=2 if len(names) > 8 else 1, loc="best")
    fig.savefig(path, dpi=DPI)
