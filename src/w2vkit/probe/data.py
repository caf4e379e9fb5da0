"""What a probe is fit on: the labelled items of a features directory, and their feature matrices.

A *source* yields `(relative_path, layers, array)` for the items asked for: `array` is `(L, T, D)`
frame features or `(L, D)` utterance vectors, `layers` the L layer ids (None for log-mel). The
features directory is one source; the baselines (`w2vkit.probe.baselines`) compute others on the
same audio. `collect` turns any source into the training and test matrices of one task and split,
so every source is probed on exactly the same items, frames and labels.

Frame subsampling: when the training (test) split holds more than `max_train_frames`
(`max_test_frames`) frames, that many are drawn uniformly without replacement from a
`numpy.random.default_rng(seed)`, once, and used for every source and layer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from w2vkit.data.labels import read_frame_labels, read_utterance_labels
from w2vkit.features.store import iter_features, read_index
from w2vkit.probe.linear import (
    ProbeResult,
    Score,
    Split,
    chance_scores,
    class_counts,
    fit_and_score,
    split_items,
    split_warnings,
)

SourceItem = tuple[str, list[int | None], np.ndarray]
Source = Iterable[SourceItem]


@dataclass
class Task:
    """Labelled items that have features, sorted by path."""

    task: str
    """"utterance" or "frame"."""
    paths: list[str]
    targets: list[np.ndarray]
    """Class ids per item: (1,) for an utterance label, (T,) for frame labels."""
    classes: list[str]
    groups: dict[str, np.ndarray]
    """Split columns: {column: (N,) value per item}."""
    skipped: list[str]
    """Labelled items that extraction skipped (left out)."""

    @property
    def utterance_targets(self) -> np.ndarray:
        """(N,) utterance class ids; zeros for the frame task (a split cannot stratify frames)."""
        if self.task == "frame":
            return np.zeros(len(self.paths), dtype=np.int64)
        return np.concatenate(self.targets)


def is_table(path: str | os.PathLike) -> bool:
    """True if the labels file starts with a `path<TAB>...` header (else `path<TAB>label` lines)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        first = next((line for line in f if line.strip()), "")
    return first.split("\t")[0].strip() in ("path", "relative_path")


def read_two_column(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """`relative_path<TAB>label` lines -> {path: {"label": label}}; errors name the line."""
    rows: dict[str, dict[str, str]] = {}
    text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0] or not fields[1].strip():
            raise ValueError(f"{path}:{number}: expected 'relative_path<TAB>label', got {line!r}")
        if fields[0] in rows:
            raise ValueError(f"{path}:{number}: {fields[0]!r} is labelled twice")
        rows[fields[0]] = {"label": fields[1].strip()}
    if not rows:
        raise ValueError(f"{path}: no labels")
    return rows


def read_table(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """An utterance table with a header, or a two-column labels file (column `label`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} not found")
    return read_utterance_labels(path) if is_table(path) else read_two_column(path)


def load_task(
    features_dir: str | os.PathLike,
    labels_path: str | os.PathLike,
    *,
    task: str = "utterance",
    target: str | None = None,
    utterances_path: str | os.PathLike | None = None,
    split_by: Sequence[str] = (),
) -> Task:
    """The labelled items of `features_dir`.

    utterance task: `labels_path` is a table (`target` column, default the first after `path`)
    or `path<TAB>label` lines. frame task: `labels_path` is a frame labels file; every item's
    label count must equal its stored frame count. Split columns come from `utterances_path`, or
    from the labels table in the utterance task.
    """
    features_dir = Path(features_dir)
    frame_counts = {row.relative_path: row.num_frames for row in read_index(features_dir)}
    skipped_path = features_dir / "skipped.tsv"
    was_skipped = set()
    if skipped_path.is_file():
        lines = skipped_path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        was_skipped = {line.split("\t")[0] for line in lines[1:]}
    if task == "frame":
        frame_labels = read_frame_labels(labels_path)
        if "path" in frame_labels:  # a header line: an utterance table, not frame labels
            raise ValueError(
                f"{labels_path} starts with a 'path' header, like an utterance table; --task "
                "frame needs frame labels, 'relative_path<TAB>label label ...' per line (`w2vkit "
                "labels --phones` writes them): pass the table as --utterances, or use --task "
                "utterance"
            )
        labelled: dict[str, np.ndarray] = {p: v.astype(str) for p, v in frame_labels.items()}
        table = read_table(utterances_path) if utterances_path else {}
    elif task == "utterance":
        table = read_table(labels_path)
        column = target or next(iter(next(iter(table.values()))))
        labelled = {p: np.array([_cell(table, p, column, labels_path)]) for p in table}
        if utterances_path:
            table = read_table(utterances_path)
    else:
        raise ValueError(f"task must be 'utterance' or 'frame', got {task!r}")
    if split_by and not table:
        raise ValueError(
            f"--split-by {','.join(split_by)} needs an utterance table (--utterances) with "
            "those columns"
        )
    for path in labelled:
        if path not in frame_counts and path not in was_skipped:
            raise ValueError(
                f"{labels_path}: {path!r} has no features in {features_dir} "
                "(paths must be relative to the manifest root, as in index.tsv)"
            )
    paths = sorted(p for p in labelled if p in frame_counts)
    if not paths:
        raise ValueError(f"{labels_path}: none of the labelled paths has features")
    if task == "frame":
        for path in paths:
            if len(labelled[path]) != frame_counts[path]:
                raise ValueError(
                    f"{labels_path}: {path!r} has {len(labelled[path])} frame labels but "
                    f"{frame_counts[path]} feature frames"
                )
    classes = sorted({str(v) for p in paths for v in labelled[p]})
    if len(classes) < 2:
        raise ValueError(f"probing needs at least 2 classes, got {classes}")
    position = {name: i for i, name in enumerate(classes)}
    targets = [np.array([position[str(v)] for v in labelled[p]], dtype=np.int64) for p in paths]
    group_source = utterances_path or labels_path
    groups = {c: np.array([_cell(table, p, c, group_source) for p in paths]) for c in split_by}
    skipped = sorted(p for p in labelled if p not in frame_counts)
    return Task(task, paths, targets, classes, groups, skipped)


def _cell(table: dict[str, dict[str, str]], path: str, column: str, source) -> str:
    row = table.get(path)
    if row is None:
        raise ValueError(f"{source}: no row for {path!r}")
    if column not in row:
        raise ValueError(f"{source}: no column {column!r}; columns: {', '.join(row)}")
    return row[column]


def select_frames(
    task: Task, items: np.ndarray, max_frames: int | None, rng: np.random.Generator
) -> dict[int, np.ndarray]:
    """{item: sorted frame indices}: all frames of `items`, or `max_frames` drawn at random."""
    lengths = np.array([len(task.targets[i]) for i in items])  # (n,)
    total = int(lengths.sum())
    if max_frames is None or total <= max_frames:
        return {int(i): np.arange(n) for i, n in zip(items, lengths, strict=True)}
    chosen = np.sort(rng.choice(total, size=max_frames, replace=False))  # into the concatenation
    starts = np.concatenate([[0], np.cumsum(lengths)])
    owner = np.searchsorted(starts, chosen, side="right") - 1  # (max_frames,) position in items
    return {
        int(items[k]): chosen[owner == k] - starts[k]
        for k in range(len(items))
        if np.any(owner == k)
    }


def stack_context(x: np.ndarray, frames: np.ndarray, context: int) -> np.ndarray:
    """Frames with their ±context neighbours concatenated (edge frames repeated at the ends).

    Shape: x (L, T, D), frames (n,) -> (L, n, (2 context + 1) D), neighbours from -context to +context.
    """
    offsets = np.arange(-context, context + 1)
    neighbours = np.clip(frames[:, None] + offsets[None, :], 0, x.shape[1] - 1)  # (n, 2K+1)
    return x[:, neighbours].reshape(x.shape[0], len(frames), -1)


@dataclass
class Matrices:
    layers: list[int | None]
    x_train: np.ndarray
    """(L, n_train, D') float32."""
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def collect(
    source: Source,
    task: Task,
    split: Split,
    selection: dict[int, np.ndarray] | None = None,
    context: int = 0,
) -> Matrices:
    """Training and test matrices of `source` for `task` on `split`.

    `selection` ({item: frame indices}, from `select_frames`) is required for the frame task.
    """
    position = {p: i for i, p in enumerate(task.paths)}
    wanted = set(split.train.tolist()) | set(split.test.tolist())
    pieces: dict[int, np.ndarray] = {}
    layers: list[int | None] = []
    for path, item_layers, array in source:
        item = position.get(path)
        if item is None or item not in wanted:
            continue
        if layers and item_layers != layers:
            raise ValueError(f"{path}: layers {item_layers} differ from {layers}")
        layers = item_layers
        if task.task == "utterance":
            pieces[item] = (array.mean(axis=1) if array.ndim == 3 else array)[:, None]  # (L, 1, D)
        else:
            if array.ndim != 3 or array.shape[1] != len(task.targets[item]):
                raise ValueError(
                    f"{path}: features of shape {array.shape} do not match its "
                    f"{len(task.targets[item])} frame labels"
                )
            if selection is None:
                raise ValueError("the frame task needs a frame selection")
            if item in selection:
                pieces[item] = stack_context(array, selection[item], context)
    expected = wanted if selection is None else wanted & set(selection)
    missing = expected - set(pieces)
    if missing:
        raise ValueError(f"the source gave no features for {task.paths[min(missing)]!r}")
    x_train, y_train = _stack(task, split.train, pieces, selection)
    x_test, y_test = _stack(task, split.test, pieces, selection)
    return Matrices(layers, x_train, y_train, x_test, y_test)


def _stack(task: Task, items: np.ndarray, pieces: dict[int, np.ndarray], selection):
    kept = [int(i) for i in items if int(i) in pieces]
    x = np.concatenate([pieces[i] for i in kept], axis=1).astype(np.float32)  # (L, n, D')
    if task.task == "utterance":
        y = np.concatenate([task.targets[i] for i in kept])
    else:
        y = np.concatenate([task.targets[i][selection[i]] for i in kept])
    return x, y


def features_source(features_dir: str | os.PathLike, paths: Iterable[str]) -> Iterator[SourceItem]:
    """The stored features of `paths` (float32 numpy), in index order."""
    wanted = set(paths)
    for row, tensor in iter_features(features_dir):
        if row.relative_path in wanted:
            yield row.relative_path, list(row.layers), tensor.float().numpy()


def probe_sources(
    task: Task,
    sources: list[tuple[str, Callable[[], Source], list[int]]],
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    max_train_frames: int | None = 20_000,
    max_test_frames: int | None = 10_000,
    c: float = 1.0,
    max_iter: int = 500,
    test_values: dict[str, list[str]] | None = None,
    threads: int = 1,
    log: Callable[[str], None] = lambda message: None,
) -> ProbeResult:
    """Probe every layer of every source, for each of its contexts, on one split and frame draw.

    `sources`: (name, a function that opens the source, contexts). Settings and split are
    recorded in the result.
    """
    split = split_items(
        task.utterance_targets,
        task.groups,
        test_fraction=test_fraction,
        seed=seed,
        test_values=test_values,
    )
    selection = None
    if task.task == "frame":
        rng = np.random.default_rng(seed)
        selection = select_frames(task, split.train, max_train_frames, rng)
        selection |= select_frames(task, split.test, max_test_frames, rng)
    scores, labels = [], None
    for name, open_source, contexts in sources:
        for context in contexts:
            log(f"probing {name}" + (f" ±{context} frames" if context else ""))
            m = collect(open_source(), task, split, selection, context)
            labels = m.y_train, m.y_test
            for layer, x_train, x_test in zip(m.layers, m.x_train, m.x_test, strict=True):
                fit = fit_and_score(
                    x_train,
                    m.y_train,
                    x_test,
                    m.y_test,
                    task.classes,
                    c=c,
                    max_iter=max_iter,
                    threads=threads,
                )
                scores.append(Score(name, layer, context, *fit))
    if labels is None:
        raise ValueError("no feature source to probe")
    y_train, y_test = labels
    notes = split_warnings(task.task, split, y_train, y_test, task.classes)
    late = [s.name for s in scores if not s.converged]
    if late:
        notes.append(
            f"L-BFGS stopped at max_iter={max_iter} before converging for {', '.join(late)}"
        )
    description = {
        "by": split.by,
        "held_out": split.held_out,
        "num_train_utterances": len(split.train),
        "num_test_utterances": len(split.test),
        "num_dropped_utterances": split.num_dropped,
        "num_train": len(y_train),
        "num_test": len(y_test),
        "test_fraction": test_fraction,
    }
    return ProbeResult(
        task=task.task,
        scores=scores,
        classes=task.classes,
        train_counts=class_counts(y_train, task.classes),
        test_counts=class_counts(y_test, task.classes),
        chance_accuracy=chance_scores(y_train, y_test)[0],
        chance_macro_f1=chance_scores(y_train, y_test)[1],
        split=description,
        warnings=notes,
        settings={
            "seed": seed,
            "c": c,
            "max_iter": max_iter,
            "max_train_frames": max_train_frames,
            "max_test_frames": max_test_frames,
            "threads": threads,
        },
    )
