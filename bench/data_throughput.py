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

    PYTHONPATH=src python bench/data_throughput.py --shards              # + shards, see below
    PYTHONPATH=src python bench/data_throughput.py --shards --shard-audio-seconds 3600 \
        --small-files 100000 --index-items 7000000

`--shards` compares, on one process (num_workers=0, so the figure is per DataLoader worker), a
pretraining epoch of batches (crop 250k samples, 1.4M samples a batch) from the file-per-file
manifest against the same audio as `w2vkit shard` tar shards, read from the local disk and from
a local HTTP server: FLAC at 16 kHz, 2-12 s files; then `--small-files` FLAC files of 1-2 s
(hard links to 200 distinct files: the page cache holds both sides, so this is the per-file CPU
cost, a lower bound on what shards save on real storage); then the time to read a synthetic
index of `--index-items` items (about 700 per shard) and plan an epoch for one rank of 64.
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


def write_flac_corpus(folder: Path, num_files: int, seconds: tuple[float, float], distinct: int):
    """FLAC files of tone + noise with lengths uniform in `seconds`; beyond `distinct` files,
    hard links to them. Returns the manifest folder."""
    rng = np.random.default_rng(0)
    audio, names, frames = folder / "audio", [], []
    audio.mkdir(parents=True)
    for i in range(num_files):
        name = f"d{i // 1000:04d}/{i:07d}.flac"
        (audio / name).parent.mkdir(exist_ok=True)
        if i < distinct:
            n = int(rng.uniform(*seconds) * SAMPLE_RATE)
            t = np.arange(n) / SAMPLE_RATE
            wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t)
            sf.write(
                audio / name, (wav + 0.05 * rng.standard_normal(n)).astype(np.float32), SAMPLE_RATE
            )
        else:
            os.link(audio / names[i % distinct], audio / name)
            n = frames[i % distinct]
        names.append(name)
        frames.append(n)
    rates = np.full(num_files, SAMPLE_RATE)
    manifest = Manifest(audio, names, np.array(frames), rates, np.ones(num_files))
    (folder / "manifest").mkdir()
    write_manifest(folder / "manifest" / "train.tsv", manifest)
    return folder / "manifest"


def epoch_rate(loader, durations: np.ndarray, max_seconds: float) -> tuple[float, float]:
    """(input audio-seconds, batched audio-seconds) per second over an epoch of `loader`."""
    done_in = done_out = 0.0
    start = time.perf_counter()
    for batch in loader:
        done_in += float(durations[batch.indices.numpy()].sum())
        done_out += batch.num_audio_samples / SAMPLE_RATE
        if time.perf_counter() - start > max_seconds:
            break
    elapsed = time.perf_counter() - start
    return done_in / elapsed, done_out / elapsed


def bench_shards_vs_files(manifest_dir: Path, max_seconds: float) -> dict[str, float]:
    """Manifest, local shards, HTTP shards: audio-seconds per second on one process."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from w2vkit import cli
    from w2vkit.data.config import DataConfig
    from w2vkit.data.shards.loader import build_shard_loaders

    shards = manifest_dir.parent / "shards"
    assert cli.main(["shard", str(manifest_dir), "--out", str(shards), "--workers", "2"]) == 0
    common = dict(min_samples=16_000, max_samples=250_000, max_batch_samples=1_400_000)
    dataset = AudioDataset(manifest_dir / "train.tsv", max_samples=250_000, min_samples=16_000)
    sampler = BucketBatchSampler(dataset.sizes, max_batch_samples=1_400_000, seed=1)
    files = build_dataloader(dataset, sampler, seed=1)
    result = {}
    result["files"], result["files_out"] = epoch_rate(
        files, dataset.num_samples / SAMPLE_RATE, max_seconds
    )
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(shards))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    for name, where in (("shards_local", str(shards)), ("shards_http", url)):
        cfg = DataConfig(shards=where, num_workers=0, valid_split="", **common)
        loader = build_shard_loaders(cfg, seed=1, rank=0, world_size=1)["train"]
        durations = loader.sampler.spec.num_samples / SAMPLE_RATE
        result[name], result[f"{name}_out"] = epoch_rate(loader, durations, max_seconds)
    server.shutdown()
    return result


def bench_index(num_items: int, world_size: int = 64) -> dict[str, float]:
    """Seconds to read a synthetic index of `num_items` items and to plan one rank's epoch."""
    from w2vkit.data.shards.index import read_index, write_index
    from w2vkit.data.shards.plan import plan_epoch, shard_batches

    rng = np.random.default_rng(0)
    per_shard = 700
    num_shards = -(-num_items // per_shard)
    shard_items = np.full(num_shards, per_shard)
    shard_items[-1] -= num_shards * per_shard - num_items
    frames = np.sort(rng.integers(32_000, 250_000, num_items))[::-1].copy()
    rows = [
        {"name": f"shard-{s:06d}.tar", "items": int(n), "samples": 0, "bytes": 1, "sha256": "0"}
        for s, n in enumerate(shard_items)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "train"
        folder.mkdir()
        items = {
            "num_frames": frames,
            "sample_rate": np.full(num_items, SAMPLE_RATE, np.int32),
            "num_channels": np.ones(num_items, np.int16),
        }
        write_index(folder, rows, items, [])
        start = time.perf_counter()
        index = read_index(tmp, "train")
        loaded = time.perf_counter() - start
    start = time.perf_counter()
    sizes = np.minimum(index.num_frames, 250_000)
    batches = shard_batches(
        sizes,
        index.shard_items,
        np.ones(len(sizes), bool),
        max_batch_samples=1_400_000,
        max_batch_size=None,
        required_batch_size_multiple=8,
    )
    batched = time.perf_counter() - start
    start = time.perf_counter()
    plan_epoch(
        batches,
        num_streams=world_size,
        seed=1,
        epoch=0,
        shuffle=True,
        shuffle_buffer=32,
        required_batch_size_multiple=8,
        wanted=[0],
    )
    return {
        "read_index_s": loaded,
        "batch_shards_s": batched,
        "plan_epoch_s": time.perf_counter() - start,
    }


def main_shards(args: argparse.Namespace) -> dict:
    record: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_flac_corpus(
            Path(tmp) / "long", round(args.shard_audio_seconds / 7), (2.0, 12.0), 10**9
        )
        record["flac_16k_2_12s"] = bench_shards_vs_files(corpus, args.seconds_per_epoch)
    if args.small_files:
        with tempfile.TemporaryDirectory() as tmp:
            corpus = write_flac_corpus(Path(tmp) / "small", args.small_files, (1.0, 2.0), 200)
            record[f"flac_16k_1_2s_{args.small_files}_files"] = bench_shards_vs_files(
                corpus, args.seconds_per_epoch
            )
    print("audio-seconds per second, one process (_out: seconds that end up in batches)")
    for case, row in record.items():
        print(f"  {case}: " + ", ".join(f"{k} {v:.0f}" for k, v in row.items()))
    if args.index_items:
        record["index"] = bench_index(args.index_items)
        print(
            f"index of {args.index_items} items: "
            + ", ".join(f"{k} {v:.2f}" for k, v in record["index"].items())
        )
    return record


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
    parser.add_argument("--shards", action="store_true", help="only the shard benchmarks")
    parser.add_argument("--shard-audio-seconds", type=float, default=1200.0)
    parser.add_argument("--small-files", type=int, default=10_000, help="0: skip that case")
    parser.add_argument("--index-items", type=int, default=7_000_000, help="0: skip")
    parser.add_argument(
        "--seconds-per-epoch", type=float, default=60.0, help="cut an epoch off after this"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker; the figures are per worker
    if args.shards:
        print(json.dumps({"bench": "data_throughput_shards", "results": main_shards(args)}))
        return
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
