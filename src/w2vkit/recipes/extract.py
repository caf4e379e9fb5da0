"""`w2vkit extract CHECKPOINT MANIFEST --out DIR`: per-layer hidden states of every manifest item.

CHECKPOINT is anything `w2vkit.load_model` reads: a fairseq `.pt`, an HF model directory (or its
`model.safetensors`) or a w2vkit checkpoint. Audio is decoded to mono 16 kHz and normalised as the
model was trained (recorded in the checkpoint; otherwise normalised for layer-norm extractors, as
HF does). The output layout is described in `w2vkit.features.extract` and docs/extract_probe.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from w2vkit.checks import device_option
from w2vkit.config import UsageError
from w2vkit.data.dataset import AudioDataset
from w2vkit.data.manifest import read_manifest
from w2vkit.features.batching import COMPUTE_DTYPES
from w2vkit.features.extract import (
    POOLS,
    extract_manifest,
    frame_geometry,
    parse_layers,
)
from w2vkit.features.store import STORAGE_DTYPES
from w2vkit.interop import load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="fairseq .pt, HF directory or w2vkit .pt")
    parser.add_argument("manifest", type=Path, help="a manifest .tsv (w2vkit manifest / fairseq)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--layers",
        default="all",
        help="'all' or comma-separated layer ids: 0 = encoder input, k = Transformer layer k "
        "(default: all)",
    )
    parser.add_argument(
        "--pool",
        choices=sorted(POOLS),
        default="none",
        help="none: frame features (L, T, D) per item; mean: utterance means (L, D)",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:0...")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=30.0,
        help="longer files run in windows of this length, frame-aligned; frames near a window "
        "edge lack context across it (0 = whole files; default 30)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="windows per forward pass, longest files first; padded (with a mask) only for "
        "layer-norm extractors, otherwise only windows of equal length share a pass (default 1)",
    )
    parser.add_argument(
        "--max-batch-seconds",
        type=float,
        default=0.0,
        help="at most this much padded audio per pass, to bound memory (0 = no limit; default 0)",
    )
    parser.add_argument(
        "--dtype",
        choices=list(COMPUTE_DTYPES),
        default="fp32",
        help="compute precision: bf16/fp16 run the model under autocast, for GPUs (features "
        "then differ from fp32 by about 1.5%% / 0.2%% in norm); default fp32",
    )
    parser.add_argument(
        "--storage-dtype",
        choices=list(STORAGE_DTYPES),
        default="float32",
        help="dtype of the stored features; float16 halves the disk use (default float32)",
    )
    parser.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="per-utterance zero mean / unit variance input; default: what the checkpoint "
        "records, else on for layer-norm extractors",
    )
    parser.add_argument(
        "--shard-mb", type=float, default=256.0, help="approximate shard size in MiB (default 256)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing OUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if (args.out / "index.tsv").exists() and not args.force:
        raise UsageError(f"{args.out} holds features; pass --force to overwrite")
    if args.max_seconds < 0 or args.shard_mb <= 0 or args.max_batch_seconds < 0:
        raise UsageError("--max-seconds and --max-batch-seconds must be >= 0 and --shard-mb > 0")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = device_option(args.device)
    try:
        model = load_model(args.checkpoint, device, head="encoder")
        manifest = read_manifest(args.manifest)
        layers = parse_layers(args.layers, model.cfg.transformer.num_layers)
    except (OSError, ValueError) as err:  # CheckpointError and ManifestError are ValueErrors
        raise UsageError(str(err)) from err
    normalize = model.normalize_input if args.normalize is None else args.normalize
    dataset = AudioDataset(manifest, normalize=normalize)
    kept = set(dataset.manifest_rows.tolist())
    empty = [(p, "manifest lists 0 frames") for i, p in enumerate(manifest.paths) if i not in kept]
    for old in args.out.glob("features-*.safetensors") if args.force else ():
        old.unlink()  # a smaller rerun must not leave shards that no index row names
    max_samples = round(args.max_seconds * dataset.sample_rate) if args.max_seconds > 0 else None
    max_batch_samples = (
        round(args.max_batch_seconds * dataset.sample_rate) if args.max_batch_seconds > 0 else None
    )
    receptive_field = frame_geometry(model.cfg.feature_extractor.conv_layers)[0]
    if max_samples is not None and max_samples < receptive_field:
        raise UsageError(
            f"--max-seconds {args.max_seconds} is shorter than one frame "
            f"({receptive_field / dataset.sample_rate:.4f} s)"
        )
    summary = extract_manifest(
        model,
        dataset,
        args.out,
        layers,
        pool=args.pool,
        storage_dtype=STORAGE_DTYPES[args.storage_dtype],
        compute_dtype=COMPUTE_DTYPES[args.dtype],
        max_samples=max_samples,
        batch_size=args.batch_size,
        max_batch_samples=max_batch_samples,
        shard_bytes=int(args.shard_mb * 2**20),
        skipped=empty,
        meta={"checkpoint": str(args.checkpoint), "manifest": str(args.manifest)},
        progress=not args.quiet,
    )
    speed = summary.audio_seconds / max(summary.wall_seconds, 1e-9)
    print(
        f"w2vkit extract: {summary.num_items} items ({summary.audio_seconds:.1f} s of audio, "
        f"{summary.num_frames} frames) -> {args.out} ({summary.num_shards} shards, layers "
        f"{args.layers}, pool {args.pool}, {args.dtype} -> {args.storage_dtype}, batch "
        f"{args.batch_size}, normalize={normalize}, {device}) in "
        f"{summary.wall_seconds:.1f} s ({speed:.0f}x real time)"
    )
    if summary.skipped:
        reasons = np.unique([reason.split(" (")[0] for _, reason in summary.skipped])
        print(
            f"w2vkit extract: skipped {len(summary.skipped)} items ({', '.join(reasons)}); "
            f"listed in {args.out / 'skipped.tsv'}",
            file=sys.stderr,
        )
    if summary.num_items == 0:
        print("w2vkit extract: no item could be extracted", file=sys.stderr)
        return 1
    return 0
