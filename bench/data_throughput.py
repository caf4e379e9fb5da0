"""Audio-seconds per wall-second that one data worker decodes, resamples and batches.

    PYTHONPATH=src python bench/data_throughput.py            # ~30 s
    PYTHONPATH=src python bench/data_throughput.py --num-workers 4
    PYTHONPATH=src python bench/data_throughput.py --scan-files 100000   # + manifest scan

Writes 60 s of synthetic audio per case (FLAC and WAV, at 16 kHz and at 44.1 kHz, 10 s files)
to a temporary folder, then runs each stage for a fixed time on one process, which is what one
DataLoader worker does:
  decode   soundfile.read only
  load     + mono + soxr resample to 16 kHz (AudioDataset.load)
  batch    + cropping and collation of whole batches (build_dataloader, num_workers=0)
Figures are input audio-seconds per second; `batch` also gives the seconds that end up in
batches (less: pretraining crops every row to the shortest of its batch). Prints a table, then
one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from w2vkit.data.audio import SAMPLE_RATE, load_audio
from w2vkit.data.dataset import AudioDataset
from w2vkit.data.loader import build_dataloader
from w2vkit.data.manifest import Manifest, write_manifest
from w2vkit.data.sampler import BucketBatchSampler
from w2vkit.recipes.manifest import find_audio, probe_all

FILE_SECONDS = 10.0


def write_case(folder: Path, fmt: str, rate: int, total_seconds: float) -> Path:
    """Files of FILE_SECONDS (speech-like lengths) of tone + noise, plus their manifest."""
    rng = np.random.default_rng(rate)
    names, frames = [], []
    for i in range(max(1, round(total_seconds / FILE_SECONDS))):
        n = int(FILE_SECONDS * rate * rng.uniform(0.8, 1.2))
        t = np.arange(n) / rate
        wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t) + 0.05 * rng.standard_normal(n)
        name = f"{i:03d}.{fmt}"
        sf.write(folder / name, wav.astype(np.float32), rate, subtype="PCM_16")
        names.append(name)
        frames.append(n)
    manifest = Manifest(
        folder, names, np.array(frames), np.full(len(names), rate), np.ones(len(names))
    )
    write_manifest(folder / "train.tsv", manifest)
    return folder / "train.tsv"


def run_for(seconds: float, step) -> tuple[float, float, float]:
    """Call `step()` (returns (input_s, output_s) of audio) until `seconds` pass."""
    done_in = done_out = 0.0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        step_in, step_out = step()
        done_in += step_in
        done_out += step_out
    return done_in / elapsed, done_out / elapsed, elapsed


def bench_case(manifest_path: Path, seconds: float, num_workers: int) -> dict[str, float]:
    dataset = AudioDataset(manifest_path, max_samples=250_000)
    paths = [dataset.path(i) for i in range(len(dataset))]
    durations = dataset.num_samples / SAMPLE_RATE
    files = itertools.cycle(range(len(paths)))

    def decode():
        wav, rate = sf.read(paths[i := next(files)], dtype="float32")
        return durations[i], len(wav) / rate

    def load():
        wav = load_audio(paths[i := next(files)])
        return durations[i], len(wav) / SAMPLE_RATE

    def loader_step(workers):
        # 480k samples = 3 rows of 10 s: a few batches per epoch, so workers have work to share.
        sampler = BucketBatchSampler(dataset.sizes, max_batch_samples=480_000, seed=1)
        loader = build_dataloader(
            dataset, sampler, seed=1, num_workers=workers, persistent_workers=workers > 0
        )
        batches = iter(())

        def step():
            nonlocal batches
            batch = next(batches, None)
            if batch is None:
                batches = iter(loader)
                batch = next(batches)
            return float(
                durations[batch.indices.numpy()].sum()
            ), batch.num_audio_samples / SAMPLE_RATE

        return step

    result = {}
    for stage, step in (("decode", decode), ("load", load), ("batch", loader_step(0))):
        result[stage], out, _ = run_for(seconds, step)
        if stage == "batch":
            result["batch_out"] = out
    if num_workers > 0:
        result[f"batch_{num_workers}w"], _, _ = run_for(seconds, loader_step(num_workers))
    return result


def bench_scan(num_files: int, workers: int) -> dict[str, float]:
    """Files per second that `w2vkit manifest` walks and probes (headers only), on tiny files
    spread over folders of 1000. Warm page cache: this is the CPU cost, not the disk's."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(num_files):
            folder = root / f"d{i // 1000:04d}"
            if i % 1000 == 0:  # one real file per folder, hard links to it (at most 65000 each)
                folder.mkdir()
                source = folder / f"{i:07d}.flac"
                sf.write(source, np.zeros(800, np.float32), SAMPLE_RATE)
            else:
                os.link(source, folder / f"{i:07d}.flac")  # same header cost, no disk
        result = {}
        start = time.perf_counter()
        paths = find_audio(root, (".flac",)).paths
        result["walk"] = len(paths) / (time.perf_counter() - start)
        for w in sorted({1, workers}):
            start = time.perf_counter()
            probe_all(root, paths, workers=w)
            result[f"probe_{w}w"] = len(paths) / (time.perf_counter() - start)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio-seconds", type=float, default=60.0, help="per case")
    parser.add_argument("--seconds-per-stage", type=float, default=2.0)
    parser.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="also time a DataLoader with this many workers (total, not per worker)",
    )
    parser.add_argument(
        "--scan-files",
        type=int,
        default=0,
        help="also time the manifest scan over this many files (e.g. 100000)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker; the figures are per worker
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("flac", "wav"):
            for rate in (16_000, 44_100):
                folder = Path(tmp) / f"{fmt}_{rate}"
                folder.mkdir()
                manifest = write_case(folder, fmt, rate, args.audio_seconds)
                results[f"{fmt}_{rate // 1000}k"] = bench_case(
                    manifest, args.seconds_per_stage, args.num_workers
                )
    columns = list(next(iter(results.values())))
    print(
        "audio-seconds per second, one process"
        + (f" ({args.num_workers}-worker column: total)" if args.num_workers else "")
    )
    print(f"{'case':<12}" + "".join(f"{c:>12}" for c in columns))
    for case, row in results.items():
        print(f"{case:<12}" + "".join(f"{row[c]:>12.0f}" for c in columns))
    record = {"bench": "data_throughput", "unit": "audio_s_per_s", "results": results}
    if args.scan_files:
        scan = bench_scan(args.scan_files, max(args.num_workers, 2))
        print(
            f"manifest scan of {args.scan_files} files, files per second: "
            + ", ".join(f"{k} {v:.0f}" for k, v in scan.items())
        )
        record["scan_files_per_s"] = scan
    print(json.dumps(record))


if __name__ == "__main__":
    main()
