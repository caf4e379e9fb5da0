"""`w2vkit shard MANIFEST_DIR --out DEST`: a manifest folder's audio as tar shards plus an index.

Each split (`train.tsv`, `valid.tsv`, ... in MANIFEST_DIR) becomes `DEST/<split>/shard-*.tar`,
`index.json` and `items.npz` (`w2vkit.data.shards.write`, `.index`). Labels that sit beside the
manifest go into each item's JSON: `.ltr`/`.wrd` lines, and the frame labels of
`.phones.npz`/`.pitch.npz` (as `phones`/`pitch` lists); the `dict.*.txt` dictionaries are copied
to DEST, where fine-tuning from local shards finds them. Shards are written by parallel
processes; a killed run, started again, keeps the shards it finished. `--verify` then re-reads
every shard and checks it against the index (size, sha256, items); a finished split (its index
exists) is not written again, only verified.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from w2vkit.checks import existing_folder, writable_folder
from w2vkit.config import UsageError
from w2vkit.data.labels import read_frame_labels
from w2vkit.data.manifest import Manifest, read_manifest
from w2vkit.data.shards import write
from w2vkit.data.shards.index import INDEX_NAME

LINE_LABELS = ("ltr", "wrd")
FRAME_LABELS = ("phones", "pitch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest_dir", type=Path, help="folder with train.tsv (and valid.tsv)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the shards to")
    parser.add_argument(
        "--shard-size",
        default="256MB",
        help="close a shard before it passes this many bytes of audio files (256MB, 1GB) or "
        "this much audio (2h, 30min)",
    )
    parser.add_argument(
        "--splits", default="train,valid", help="comma-separated manifests to shard (if present)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="processes writing shards in parallel",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="after writing (nothing, when every shard exists), re-read every shard and check it "
        "against the index; exit 1 on any difference",
    )


def run(args: argparse.Namespace) -> int:
    source = existing_folder(args.manifest_dir, "MANIFEST_DIR")
    size = write.parse_shard_size(args.shard_size)
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    splits = [s for s in args.splits.split(",") if (source / f"{s.strip()}.tsv").is_file()]
    if not splits:
        raise UsageError(f"{source} has none of the manifests --splits={args.splits} names")
    writable_folder(args.out, "--out")
    args.out.mkdir(parents=True, exist_ok=True)
    for dictionary in sorted(source.glob("dict.*.txt")):  # fine-tuning reads it beside the shards
        shutil.copyfile(dictionary, args.out / dictionary.name)
    problems = []
    for split in splits:
        problems += _shard_split(source, split.strip(), args.out / split.strip(), size, args)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


def _shard_split(
    source: Path, split: str, dest: Path, size: write.ShardSize, args: argparse.Namespace
) -> list[str]:
    manifest = read_manifest(source / f"{split}.tsv")
    kinds, item_labels = _labels(source, split, manifest)
    jobs = write.plan_shards(manifest, size, item_labels, dest)
    write.check_plan(dest, write.plan_digest(jobs, kinds))
    index = dest / INDEX_NAME
    if index.is_file():  # finished before: the index is what --verify checks the shards against
        rows = json.loads(index.read_text(encoding="utf-8"))["shards"]
    else:
        done = sum(j.path.is_file() for j in jobs)
        label = f"{split}: {len(manifest)} files -> {len(jobs)} shards"
        if done:
            label += f" ({done} already written)"
        with ProcessPoolExecutor(args.workers) as pool:
            rows = list(tqdm(pool.map(write.write_shard, jobs), total=len(jobs), desc=label))
        write.finish(dest, jobs, rows, kinds)
    print(f"{split}: {len(jobs)} shards, {len(manifest)} items in {dest}")
    if not args.verify:
        return []
    checks = tqdm(zip(jobs, rows, strict=True), total=len(jobs), desc=f"{split}: verifying")
    problems = [p for job, row in checks if (p := write.verify_shard(job.path, row))]
    if not problems:
        print(f"{split}: every shard matches its index")
    return problems


def _labels(source: Path, split: str, manifest: Manifest) -> tuple[list[str], list[dict]]:
    """(label kinds present, per manifest row the labels for its JSON)."""
    rows: list[dict] = [{} for _ in range(len(manifest))]
    kinds = []
    for kind in LINE_LABELS:
        path = source / f"{split}.{kind}"
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) != len(manifest):
            raise UsageError(
                f"{path} has {len(lines)} lines but {split}.tsv has {len(manifest)} rows: one "
                "label line per audio row, in the same order"
            )
        kinds.append(kind)
        for row, line in zip(rows, lines, strict=True):
            row[kind] = line
    for kind in FRAME_LABELS:
        path = source / f"{split}.{kind}.npz"
        if not path.is_file():
            continue
        by_path = read_frame_labels(path)
        kinds.append(kind)
        for row, name in zip(rows, manifest.paths, strict=True):
            if name in by_path:
                row[kind] = by_path[name].tolist()
    return kinds, rows


__all__ = ["add_arguments", "run"]
