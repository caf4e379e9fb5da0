"""Linear probes: how linearly decodable a label is from each layer, on items the probe never saw.

One probe = scikit-learn's `StandardScaler` (statistics of the training split only) followed by a
multinomial `LogisticRegression` (L-BFGS, L2 penalty of strength 1/C), fit on the training split
and scored on the test split: accuracy, macro-F1 (over the classes present in the test split) and
F1 per class. Chance is the majority class of the training split, answered for every test item.

Splits (`split_items`): without groups, a stratified random split of the items; with groups
(columns such as voice or sentence), a seeded share of each column's values is held out and an item
is a test item only if all its values are held out, a training item only if none is, so a held-out
voice is never seen in training. Items with a mix are dropped.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

MIN_TEST_ITEMS = {"utterance": 20, "frame": 500}
"""Fewer test items than this and a score moves by more than a few points per item: warned."""
MIN_HELD_OUT_VALUES = 2
"""One held-out voice measures that voice, not voices in general: warned."""


@dataclass
class Score:
    features: str
    """"pretrained", "random" or "logmel"."""
    layer: int | None
    """Layer id (0 = encoder input); None for log-mel."""
    context: int
    """±context neighbouring frames stacked (frame task)."""
    accuracy: float
    macro_f1: float
    train_accuracy: float
    per_class_f1: dict[str, float]
    converged: bool

    @property
    def name(self) -> str:
        layer = "" if self.layer is None else f" L{self.layer}"
        context = f" ±{self.context}" if self.context else ""
        return f"{self.features}{layer}{context}"


@dataclass
class Split:
    train: np.ndarray
    """Item indices, sorted."""
    test: np.ndarray
    by: list[str]
    """Columns whose values were held out; [] = stratified random split."""
    held_out: dict[str, list[str]] = field(default_factory=dict)
    """Held-out values per column."""
    num_dropped: int = 0
    """Items that have held-out and training values (in different columns)."""


@dataclass
class ProbeResult:
    task: str
    scores: list[Score]
    classes: list[str]
    train_counts: dict[str, int]
    """Training examples per class (frames or utterances)."""
    test_counts: dict[str, int]
    chance_accuracy: float
    chance_macro_f1: float
    split: dict
    warnings: list[str]
    settings: dict

    def best(self, features: str = "pretrained") -> Score:
        candidates = [s for s in self.scores if s.features == features] or self.scores
        return max(candidates, key=lambda s: s.accuracy)

    def to_dict(self) -> dict:
        return {**asdict(self), "best": asdict(self.best())}


def split_items(
    targets: np.ndarray,
    groups: dict[str, np.ndarray] | None = None,
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    test_values: dict[str, list[str]] | None = None,
) -> Split:
    """Train/test item indices. Shape: targets (N,), groups {column: (N,) values}.

    `test_values` fixes the held-out values of some columns instead of drawing them.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if test_values and not set(test_values) <= set(groups or {}):
        raise ValueError(
            f"test values given for {sorted(test_values)} but split by {sorted(groups or {})}"
        )
    if not groups:
        return _stratified(targets, test_fraction, seed)
    rng = np.random.default_rng(seed)
    in_test = np.ones(len(targets), dtype=bool)
    in_train = np.ones(len(targets), dtype=bool)
    held_out = {}
    for column, values in groups.items():
        distinct = np.unique(values)
        if len(distinct) < 2:
            raise ValueError(
                f"cannot hold out {column!r}: all items share one value ({distinct[0]!r})"
            )
        count = min(max(round(test_fraction * len(distinct)), 1), len(distinct) - 1)
        chosen = np.sort(rng.choice(distinct, size=count, replace=False))
        if test_values and column in test_values:
            unknown = sorted(set(test_values[column]) - set(distinct.tolist()))
            if unknown:
                raise ValueError(f"no item has {column} {unknown[0]!r} (test values of {column})")
            chosen = np.array(sorted(test_values[column]))
        member = np.isin(values, chosen)
        in_test &= member
        in_train &= ~member
        held_out[column] = [str(v) for v in chosen]
    train, test = np.flatnonzero(in_train), np.flatnonzero(in_test)
    if len(train) == 0 or len(test) == 0:
        raise ValueError(
            f"holding out {held_out} leaves {len(train)} training and {len(test)} test items"
        )
    dropped = len(targets) - len(train) - len(test)
    return Split(train, test, list(groups), held_out, dropped)


def _stratified(targets: np.ndarray, test_fraction: float, seed: int) -> Split:
    """test_fraction of each class (rounded, at least one) to test; a class of one stays in train."""
    from sklearn.model_selection import train_test_split

    counts = Counter(targets.tolist())
    shared = np.array([counts[t] >= 2 for t in targets.tolist()])
    indices = np.flatnonzero(shared)
    if len(indices) == 0:
        raise ValueError("no test items: every class has a single item")
    num_classes = len({targets[i] for i in indices})
    num_test = min(
        max(round(test_fraction * len(indices)), num_classes), len(indices) - num_classes
    )
    train, test = train_test_split(
        indices, test_size=num_test, stratify=targets[indices], random_state=seed
    )
    train = np.concatenate([train, np.flatnonzero(~shared)])
    return Split(np.sort(train), np.sort(test), [])


def split_warnings(
    task: str, split: Split, train_targets, test_targets, classes: Sequence[str]
) -> list[str]:
    """Reasons a score on this split means little. Targets are ids into `classes`."""
    notes = []
    if len(test_targets) < MIN_TEST_ITEMS[task]:
        notes.append(
            f"only {len(test_targets)} test {task}s: one more correct answer moves the accuracy "
            f"by {100 / max(len(test_targets), 1):.1f} points"
        )
    for column, values in split.held_out.items():
        if len(values) < MIN_HELD_OUT_VALUES:
            notes.append(
                f"a single held-out {column} ({values[0]}): the score measures that {column}, "
                f"not unseen {column}s in general"
            )
    unseen = sorted(set(map(int, test_targets)) - set(map(int, train_targets)))
    if unseen:
        notes.append(
            f"{len(unseen)} test classes never occur in training (e.g. {classes[unseen[0]]!r}): "
            "they cannot be predicted"
        )
    return notes


def fit_and_score(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: Sequence[str],
    *,
    c: float = 1.0,
    max_iter: int = 500,
    threads: int = 1,
) -> tuple[float, float, float, dict[str, float], bool]:
    """(test accuracy, macro-F1, train accuracy, F1 per test class, converged).

    `threads` caps BLAS and OpenMP threads during the fit: with more threads than free cores,
    OpenMP's waiting threads made a 7000-frame fit 17x slower (561 s vs 32 s, measured on the
    shared 2-core machine), so the default is 1.

    Shape: x (N, D), y (N,) class ids into `classes`.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2:
        raise ValueError(f"the training split holds a single class ({classes[y_train[0]]!r})")
    from threadpoolctl import threadpool_limits

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=threads):
        warnings.simplefilter("always", ConvergenceWarning)
        probe.fit(x_train, y_train)
        predicted = probe.predict(x_test)
        train_predicted = probe.predict(x_train)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    present = np.unique(y_test)  # macro-F1 over the classes the test split holds
    per_class = f1_score(y_test, predicted, labels=present, average=None, zero_division=0)
    return (
        float(np.mean(predicted == y_test)),
        float(np.mean(per_class)),
        float(np.mean(train_predicted == y_train)),
        {classes[k]: float(f) for k, f in zip(present, per_class, strict=True)},
        converged,
    )


def chance_scores(y_train: np.ndarray, y_test: np.ndarray) -> tuple[float, float]:
    """(accuracy, macro-F1) of answering the training split's majority class for every test item."""
    from sklearn.metrics import f1_score

    majority = Counter(y_train.tolist()).most_common(1)[0][0]
    predicted = np.full_like(y_test, majority)
    present = np.unique(y_test)
    f1 = f1_score(y_test, predicted, labels=present, average="macro", zero_division=0)
    return float(np.mean(predicted == y_test)), float(f1)


def class_counts(y: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(y, minlength=len(classes))
    return {name: int(n) for name, n in zip(classes, counts, strict=True) if n}


def format_table(result: ProbeResult) -> str:
    best = result.best()
    lines = [f"{'features':<22}  test_acc  macro_f1  train_acc"]
    for s in result.scores:
        mark = "  <- best" if s is best else ("  (not converged)" if not s.converged else "")
        lines.append(
            f"{s.name:<22}  {s.accuracy:8.3f}  {s.macro_f1:8.3f}  {s.train_accuracy:9.3f}{mark}"
        )
    split = result.split
    held = "; ".join(f"held-out {k}: {', '.join(v)}" for k, v in split["held_out"].items())
    lines.append(
        f"chance (majority class) {result.chance_accuracy:.3f}; {len(result.classes)} classes, "
        f"{split['num_train']} train / {split['num_test']} test {result.task}s"
        + (f"; {held}" if held else "")
    )
    return "\n".join(lines)


def plot(result: ProbeResult, path: str | os.PathLike, title: str = "linear probe") -> None:
    """Accuracy and macro-F1 per layer: pretrained and random as lines, log-mel and chance as
    horizontal lines. Written to `path` (PNG)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, works headless

    fig = Figure(figsize=(9.0, 3.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    chance = {"accuracy": result.chance_accuracy, "macro_f1": result.chance_macro_f1}
    styles = {"pretrained": ("tab:blue", "o"), "random": ("tab:gray", "s")}
    for ax, metric in zip(axes, ("accuracy", "macro_f1"), strict=True):
        for features, (color, marker) in styles.items():
            for context in sorted({s.context for s in result.scores if s.features == features}):
                points = [
                    s for s in result.scores if s.features == features and s.context == context
                ]
                label = features + (f" ±{context}" if context else "")
                ax.plot(
                    [s.layer for s in points],
                    [getattr(s, metric) for s in points],
                    marker=marker,
                    color=color,
                    linestyle="-" if context == 0 else ":",
                    label=label,
                )
        logmel = [s for s in result.scores if s.features == "logmel"]
        for s, color in zip(logmel, ("tab:green", "tab:olive", "tab:cyan"), strict=False):
            ax.axhline(getattr(s, metric), color=color, linestyle="--", label=s.name)
        ax.axhline(chance[metric], color="tab:red", linestyle=":", label="chance")
        layers = sorted({s.layer for s in result.scores if s.layer is not None})
        ax.set_xticks(layers)
        ax.set(xlabel="layer (0 = encoder input)", ylim=(0, 1.02), title=f"{title}: {metric}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test score")
    axes[1].legend(loc="best", fontsize="small")
    fig.savefig(path, dpi=110)
