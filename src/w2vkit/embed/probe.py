"""Layer-wise linear probing: how linearly decodable an utterance label is from each layer.

For every stored layer, utterance vectors (frame means) are standardised with the training split's
statistics and a multinomial logistic regression with an L2 penalty is fit by full-batch L-BFGS in
float64 from zero weights. With a positive penalty the objective is strictly convex, so the fit
does not depend on an initialisation; the only randomness is the stratified train/test split,
drawn from a `torch.Generator` seeded with `seed`.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from w2vkit.embed.extract import iter_features, read_index


@dataclass
class LayerScore:
    layer: int
    accuracy: float
    """Test accuracy."""
    train_accuracy: float


@dataclass
class ProbeResult:
    scores: list[LayerScore]
    classes: list[str]
    num_train: int
    num_test: int
    chance_accuracy: float
    """Test accuracy of always answering the most frequent training class."""
    seed: int
    weight_decay: float
    max_iter: int

    @property
    def best(self) -> LayerScore:
        return max(self.scores, key=lambda s: s.accuracy)

    def to_dict(self) -> dict:
        return {**asdict(self), "best_layer": self.best.layer}


def read_labels(path: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """`relative_path<TAB>label` lines -> {relative_path: (label, line_number)}; errors name the
    line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} not found")
    labels: dict[str, tuple[str, int]] = {}
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0] or not fields[1].strip():
            raise ValueError(f"{path}:{number}: expected 'relative_path<TAB>label', got {line!r}")
        if fields[0] in labels:
            raise ValueError(
                f"{path}:{number}: {fields[0]!r} is labelled twice (first on line "
                f"{labels[fields[0]][1]})"
            )
        labels[fields[0]] = (fields[1].strip(), number)
    if not labels:
        raise ValueError(f"{path}: no labels")
    return labels


def load_labelled_vectors(
    features_dir: str | os.PathLike, labels_path: str | os.PathLike
) -> tuple[list[int], Tensor, list[str], list[str]]:
    """Layer ids, utterance vectors, their labels and the labelled paths extraction skipped.

    Every labelled path must be in the features (or in `skipped.tsv`, then it is left out and
    returned); unlabelled features are ignored. Items are ordered by path, so the split does not
    depend on the order of either file. Frame features are averaged over frames; mean-pooled ones
    are used as stored.

    Shape: -> layers (L,), vectors (L, N, D) fp32, labels (N,), skipped
    """
    features_dir = Path(features_dir)
    labels = read_labels(labels_path)
    stored = {row.relative_path for row in read_index(features_dir)}
    skipped_path = features_dir / "skipped.tsv"
    skipped_lines = (
        skipped_path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()[1:]
        if skipped_path.is_file()
        else []
    )
    was_skipped = {line.split("\t")[0] for line in skipped_lines}
    for path, (_, number) in labels.items():
        if path not in stored and path not in was_skipped:
            raise ValueError(
                f"{labels_path}:{number}: {path!r} has no features in {features_dir} "
                "(paths must be relative to the manifest root, as in index.tsv)"
            )
    paths = sorted(p for p in labels if p in stored)
    position = {p: i for i, p in enumerate(paths)}
    vectors: list[Tensor] = [torch.empty(0)] * len(paths)
    layers: tuple[int, ...] = ()
    for row, tensor in iter_features(features_dir):
        if row.relative_path not in position:
            continue
        if layers and row.layers != layers:
            raise ValueError(f"{row.relative_path}: layers {row.layers} differ from {layers}")
        layers = row.layers
        tensor = tensor.float()  # (L, T, D) | (L, D)
        vectors[position[row.relative_path]] = tensor.mean(dim=1) if tensor.dim() == 3 else tensor
    if not paths:
        raise ValueError(f"{labels_path}: none of the labelled paths has features")
    skipped = sorted(p for p in labels if p not in stored)
    return list(layers), torch.stack(vectors, dim=1), [labels[p][0] for p in paths], skipped


def stratified_split(
    targets: Tensor, test_fraction: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Indices (train, test): test_fraction * n_c (rounded half up) of each class's n_c items go
    to test, at least one and never all (a class with one item is train only).

    Shape: targets (N,) long -> (N_train,), (N_test,) sorted
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    train, test = [], []
    for c in range(int(targets.max()) + 1):
        members = torch.nonzero(targets == c).flatten()  # (n_c,)
        members = members[torch.randperm(len(members), generator=generator)]
        num_test = min(max(int(test_fraction * len(members) + 0.5), 1), len(members) - 1)
        test.append(members[:num_test])
        train.append(members[num_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def fit_logistic(
    x: Tensor, targets: Tensor, num_classes: int, *, weight_decay: float, max_iter: int
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression: min mean CE(x W + b) + weight_decay * |W|^2, by L-BFGS.

    Shape: x (N, D) float64, targets (N,) -> W (D, K), b (K,)
    """
    weight = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, targets) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def probe_layers(
    vectors: Tensor,
    layers: list[int],
    labels: list[str],
    *,
    test_fraction: float = 0.25,
    weight_decay: float = 1e-3,
    max_iter: int = 200,
    seed: int = 0,
) -> ProbeResult:
    """Probe every layer on the same seeded split. Shape: vectors (L, N, D), labels N strings."""
    if vectors.dim() != 3 or vectors.shape[:2] != (len(layers), len(labels)):
        raise ValueError(
            f"vectors must be (L={len(layers)}, N={len(labels)}, D), got {tuple(vectors.shape)}"
        )
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"probing needs at least 2 classes, got {classes}")
    if weight_decay < 0 or max_iter < 1:
        raise ValueError(
            f"need weight_decay >= 0 and max_iter >= 1, got {weight_decay}, {max_iter}"
        )
    targets = torch.tensor([classes.index(label) for label in labels])  # (N,)
    generator = torch.Generator().manual_seed(seed)
    train, test = stratified_split(targets, test_fraction, generator)
    if len(test) == 0:
        raise ValueError("no test items: every class has a single utterance")
    majority = Counter(targets[train].tolist()).most_common(1)[0][0]
    scores = []
    for layer, x in zip(layers, vectors.double(), strict=True):  # x (N, D)
        mean = x[train].mean(dim=0)
        std = x[train].std(dim=0)
        std = torch.where(std > 1e-12, std, torch.ones_like(std))  # constant dims: centre only
        x = (x - mean) / std  # (N, D), standardised with the training statistics only
        weight, bias = fit_logistic(
            x[train], targets[train], len(classes), weight_decay=weight_decay, max_iter=max_iter
        )
        predicted = (x @ weight + bias).argmax(dim=1)  # (N,)
        correct = predicted == targets
        scores.append(
            LayerScore(
                layer, correct[test].double().mean().item(), correct[train].double().mean().item()
            )
        )
    return ProbeResult(
        scores=scores,
        classes=classes,
        num_train=len(train),
        num_test=len(test),
        chance_accuracy=(targets[test] == majority).double().mean().item(),
        seed=seed,
        weight_decay=weight_decay,
        max_iter=max_iter,
    )


def format_table(result: ProbeResult) -> str:
    best = result.best.layer
    lines = ["layer  test_acc  train_acc"]
    for s in result.scores:
        mark = "  <- best" if s.layer == best else ""
        lines.append(f"{s.layer:>5}  {s.accuracy:8.3f}  {s.train_accuracy:9.3f}{mark}")
    lines.append(
        f"chance (majority class) {result.chance_accuracy:.3f}; {len(result.classes)} classes, "
        f"{result.num_train} train / {result.num_test} test utterances, seed {result.seed}"
    )
    return "\n".join(lines)


def plot(result: ProbeResult, path: str | os.PathLike, title: str = "linear probe") -> None:
    """Bar plot of test accuracy per layer with the chance level, written to `path`."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, works headless

    fig = Figure(figsize=(max(4.0, 0.45 * len(result.scores) + 1.5), 3.2), layout="constrained")
    ax = fig.subplots()
    layers = [s.layer for s in result.scores]
    ax.bar([str(k) for k in layers], [s.accuracy for s in result.scores], color="tab:blue")
    ax.axhline(result.chance_accuracy, color="tab:red", linestyle="--", label="chance")
    ax.set(xlabel="layer (0 = encoder input)", ylabel="test accuracy", ylim=(0, 1), title=title)
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=120)
