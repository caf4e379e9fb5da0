"""`w2vkit targets MANIFEST_DIR --clusters K`: HuBERT's frame labels by k-means, `.km` files.

Iteration 1 clusters MFCCs (39 values per 10 ms: labels at 100 Hz, `data.label_rate: 100`);
iteration 2 (`--model CKPT --layer L`) clusters layer L of a pretrained model (one label per
encoder frame, 50 Hz for the usual 20 ms stride). The centroids are fitted on at most
`--max-frames` frames drawn uniformly from the first split, then every split's frames are labelled
and written beside its manifest as `<split>.km` (one line per manifest row, in order), with
`dict.km.txt` and the centroids (`km_centroids.npy`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from w2vkit.config import UsageError
from w2vkit.data.audio import SAMPLE_RATE, DecodeError
from w2vkit.data.dataset import AudioDataset
from w2vkit.data.manifest import read_manifest
from w2vkit.pretrain.hubert import kmeans
from w2vkit.pretrain.hubert.health import cluster_balance
from w2vkit.pretrain.hubert.mfcc import LABEL_RATE, WINDOW, mfcc_features

Featurizer = Callable[[torch.Tensor], np.ndarray]
"""(S,) waveform -> (T, D) frame features."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest_dir", type=Path, help="folder of <split>.tsv manifests")
    parser.add_argument("--clusters", type=int, default=100, help="k of k-means (default 100)")
    parser.add_argument(
        "--splits",
        nargs="+",
        default=["train", "valid"],
        help="manifests to label; the first one's frames fit the clusters (a missing valid "
        "split is skipped)",
    )
    parser.add_argument(
        "--model", type=Path, help="iteration 2: cluster this model's layer (any load_model file)"
    )
    parser.add_argument(
        "--layer", type=int, default=6, help="with --model: 0 = encoder input, k = layer k"
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=500_000,
        help="frames the k-means is fitted on, sampled uniformly (memory: frames x dim x 4 bytes)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the frame sample and k-means")
    parser.add_argument("--dest", type=Path, help="where to write (default: MANIFEST_DIR)")
    parser.add_argument("--device", default="cpu", help="with --model: cpu, cuda, cuda:0...")


def run(args: argparse.Namespace) -> int:
    if args.clusters < 2:
        raise UsageError(f"--clusters must be >= 2, got {args.clusters}")
    if args.max_frames < args.clusters:
        raise UsageError(f"--max-frames {args.max_frames} is below --clusters {args.clusters}")
    dest = args.dest or args.manifest_dir
    splits = [s for s in args.splits if (args.manifest_dir / f"{s}.tsv").is_file()]
    if not splits or splits[0] != args.splits[0]:
        raise UsageError(f"{args.manifest_dir / (args.splits[0] + '.tsv')} not found")
    featurize, rate, what, normalize = _featurizer(args)
    datasets = {s: _dataset(args.manifest_dir / f"{s}.tsv", normalize) for s in splits}
    start = time.perf_counter()
    sample = kmeans.sample_frames(
        _features(datasets[splits[0]], featurize, f"{splits[0]} (k-means sample)"),
        args.max_frames,
        seed=args.seed,
    )
    _progress(f"fitting {args.clusters} clusters on {len(sample)} frames of {what}")
    try:
        centroids = kmeans.fit_kmeans(sample, args.clusters, seed=args.seed)
    except ValueError as err:
        raise UsageError(f"{args.manifest_dir / splits[0]}.tsv: {err}") from None
    dest.mkdir(parents=True, exist_ok=True)
    np.save(dest / "km_centroids.npy", centroids)
    kmeans.write_dictionary(dest / "dict.km.txt", args.clusters)
    for split in splits:
        rows = [
            kmeans.nearest_centroid(x, centroids) if len(x) else np.zeros(0, dtype=np.int64)
            for x in _features(datasets[split], featurize, split)
        ]
        kmeans.write_km(dest / f"{split}.km", rows)
        finding = cluster_balance(kmeans.class_counts(rows, args.clusters), source=f"{split}.km")
        if finding is not None:
            print(finding.format(), file=sys.stderr)
    print(
        f"w2vkit targets: {args.clusters} clusters of {what} -> {', '.join(s + '.km' for s in splits)} "
        f"in {dest} ({time.perf_counter() - start:.0f} s); labels at {rate:g} Hz\n"
        f"next: w2vkit pretrain hubert_cpu data.manifest_dir={dest} data.label_rate={rate:g} "
        f"hubert.num_classes=[{args.clusters}]"
    )
    return 0


def _featurizer(args: argparse.Namespace) -> tuple[Featurizer, float, str, bool]:
    """The frame features to cluster, their rate in Hz, a name for them, and whether the audio is
    normalised per utterance first (as the model was trained; MFCCs take it as it is)."""
    if args.model is None:
        return (lambda wav: mfcc_features(wav).numpy()), LABEL_RATE, "MFCC + deltas", False
    from w2vkit.interop import load_model  # the model stack only for iteration 2
    from w2vkit.model.feature_extractor import frame_geometry

    try:
        model = load_model(args.model, args.device, head="encoder")
    except (OSError, ValueError) as err:
        raise UsageError(str(err)) from err
    layers = model.cfg.transformer.num_layers
    if not 0 <= args.layer <= layers:
        raise UsageError(f"--layer must be in [0, {layers}] for {args.model}, got {args.layer}")
    _, stride = frame_geometry(model.cfg.feature_extractor.conv_layers)

    @torch.no_grad()
    def featurize(wav: torch.Tensor) -> np.ndarray:
        states = model.extract_features(wav[None].to(args.device), layer=args.layer).hidden_states
        return states[args.layer][0].float().cpu().numpy()  # (T, D)

    name = f"layer {args.layer} of {args.model}"
    return featurize, SAMPLE_RATE / stride, name, model.normalize_input


def _dataset(manifest: Path, normalize: bool) -> tuple[AudioDataset, int]:
    """The manifest's audio and its number of rows (the `.km` lines to write)."""
    try:
        rows = read_manifest(manifest)
        return AudioDataset(rows, random_crop=False, normalize=normalize), len(rows.paths)
    except (OSError, ValueError) as err:
        raise UsageError(str(err)) from err


def _features(
    data: tuple[AudioDataset, int], featurize: Featurizer, name: str
) -> Iterator[np.ndarray]:
    """Frame features of every manifest row in order; a row too short for one frame gives none."""
    dataset, num_rows = data
    by_row = dict(zip(dataset.manifest_rows.tolist(), range(len(dataset)), strict=True))
    last = time.perf_counter()
    for row in range(num_rows):
        index = by_row.get(row)
        if index is None or dataset.num_samples[index] < WINDOW:
            yield np.zeros((0, 1), dtype=np.float32)
            continue
        try:
            wav = dataset.decode(index, min_samples=WINDOW)
        except DecodeError as err:
            raise UsageError(f"{dataset.path(index)}: {err}") from None
        yield featurize(wav)
        if time.perf_counter() - last > 5:
            _progress(f"{name}: {row + 1}/{num_rows} utterances")
            last = time.perf_counter()


def _progress(message: str) -> None:
    print(f"w2vkit targets: {message}", file=sys.stderr, flush=True)


__all__ = ["add_arguments", "run"]
