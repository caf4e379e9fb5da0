"""Speed of `w2vkit extract` (audio-seconds per second) against its batch size.

    PYTHONPATH=src python bench/extract.py --preset base --files 32 --batch-sizes 1 2 4 8 16
    PYTHONPATH=src python bench/extract.py --preset large --device cuda --dtype bf16 \
        --files 256 --batch-sizes 1 4 16 64

Writes a synthetic manifest of `--files` WAV files, lengths uniform in [--min-seconds,
--max-seconds] at whole samples (so no two share a length, as in a real corpus), into a temporary
directory, then times `extract_manifest` (the code path of `w2vkit extract`: decode, length-sorted
batching, forward, pooling, safetensors shards, index) on a random-init model of `--preset`, once
per batch size per round, alternating batch sizes within each round so a noisy machine hits all
alike. Reported per batch size: median and minimum wall time over `--repeats` rounds (after
`--warmup` untimed rounds), audio-seconds per second at the median, the speed-up over batch size 1,
the largest difference of the stored features from batch size 1's, and the peak CUDA memory on GPU.
Group-norm presets (tiny, base) batch only windows of equal length: with whole files of distinct
lengths they gain nothing, with `--window-seconds` below the file lengths their full windows
batch. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from w2vkit.data.dataset import AudioDataset
from w2vkit.data.manifest import Manifest, write_manifest
from w2vkit.features.batching import COMPUTE_DTYPES
from w2vkit.features.extract import extract_manifest, parse_layers
from w2vkit.features.store import load_features
from w2vkit.model.wav2vec2 import Wav2Vec2Model

SAMPLE_RATE = 16_000


def write_corpus(directory: Path, args: argparse.Namespace) -> Path:
    """`args.files` noisy tones of distinct random lengths and their manifest. Returns its path."""
    rng = np.random.default_rng(args.seed)
    low, high = round(args.min_seconds * SAMPLE_RATE), round(args.max_seconds * SAMPLE_RATE)
    lengths = rng.integers(low, high + 1, size=args.files)  # (M,) samples
    names = []
    for i, length in enumerate(lengths):
        t = np.arange(length) / SAMPLE_RATE
        wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t) + 0.05 * rng.standard_normal(
            length
        )
        names.append(f"utt_{i:05d}.wav")
        sf.write(directory / names[-1], wav.astype(np.float32), SAMPLE_RATE)
    manifest = directory / "bench.tsv"
    write_manifest(manifest, Manifest(directory, names, lengths))
    return manifest


def time_batch_size(
    model: Wav2Vec2Model,
    dataset: AudioDataset,
    out: Path,
    batch_size: int,
    args: argparse.Namespace,
) -> tuple[float, float]:
    """(wall seconds, audio seconds) of one `extract_manifest` run into `out`."""
    summary = extract_manifest(
        model,
        dataset,
        out,
        parse_layers(args.layers, model.cfg.transformer.num_layers),
        pool=args.pool,
        compute_dtype=COMPUTE_DTYPES[args.dtype],
        max_samples=round(args.window_seconds * SAMPLE_RATE) if args.window_seconds else None,
        batch_size=batch_size,
        progress=False,
    )
    return summary.wall_seconds, summary.audio_seconds


def max_difference(reference: Path, other: Path) -> float:
    """Largest absolute difference between two feature directories' tensors."""
    expected, actual = load_features(reference), load_features(other)
    return max(float((actual[k].float() - v.float()).abs().max()) for k, v in expected.items())


def run(args: argparse.Namespace, work: Path) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = Wav2Vec2Model.from_preset(args.preset).to(device).eval()
    dataset = AudioDataset(write_corpus(work, args), normalize=model.normalize_input)
    times: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    peak_mib: dict[int, float | None] = {b: None for b in args.batch_sizes}
    audio_seconds = 0.0
    for round_index in range(args.warmup + args.repeats):
        for batch_size in args.batch_sizes:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            wall, audio_seconds = time_batch_size(
                model, dataset, work / f"b{batch_size}", batch_size, args
            )
            if round_index >= args.warmup:
                times[batch_size].append(wall)
            if device.type == "cuda":
                peak_mib[batch_size] = torch.cuda.max_memory_allocated(device) / 2**20
    first = args.batch_sizes[0]
    baseline = statistics.median(times[first])
    rows = {}
    for batch_size, wall in times.items():
        median = statistics.median(wall)
        rows[batch_size] = {
            "median_s": median,
            "min_s": min(wall),
            "audio_sec_per_sec": audio_seconds / median,
            "speedup": baseline / median,
            "max_diff": max_difference(work / f"b{first}", work / f"b{batch_size}"),
            "peak_cuda_mib": peak_mib[batch_size],
        }
    return {"audio_seconds": audio_seconds, "results": rows}


def print_table(args: argparse.Namespace, report: dict) -> None:
    print(
        f"extract: preset {args.preset}, {args.files} files of {args.min_seconds}-"
        f"{args.max_seconds} s ({report['audio_seconds']:.1f} s of audio), windows "
        f"{args.window_seconds or 'none'} s, layers {args.layers}, pool {args.pool}, "
        f"{args.device} {args.dtype}, {args.threads} threads, median of {args.repeats} rounds"
    )
    first = args.batch_sizes[0]
    print(f"{'batch':>5} {'median s':>9} {'min s':>8} {'audio s/s':>10} {f'x b{first}':>7} "
          f"{'max diff':>9} {'CUDA MiB':>9}")  # fmt: skip
    for batch_size, r in report["results"].items():
        peak = f"{r['peak_cuda_mib']:.0f}" if r["peak_cuda_mib"] is not None else "-"
        print(
            f"{batch_size:>5} {r['median_s']:9.3f} {r['min_s']:8.3f} {r['audio_sec_per_sec']:10.1f} "
            f"{r['speedup']:7.2f} {r['max_diff']:9.1e} {peak:>9}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "base", "large"])
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--max-seconds", type=float, default=12.0)
    parser.add_argument(
        "--window-seconds", type=float, default=30.0, help="extract --max-seconds (0 = whole files)"
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=list(COMPUTE_DTYPES))
    parser.add_argument("--layers", default="all", help="as extract --layers")
    parser.add_argument(
        "--pool",
        default="mean",
        choices=["none", "mean"],
        help="mean (default): no disk-bound writes",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.files < 1 or not 0 < args.min_seconds <= args.max_seconds:
        parser.error("need --repeats >= 1, --files >= 1 and 0 < --min-seconds <= --max-seconds")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="w2vkit-bench-extract-") as work:
        report = run(args, Path(work))
    print_table(args, report)
    print(json.dumps({"benchmark": "extract", **vars(args), **report}))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
