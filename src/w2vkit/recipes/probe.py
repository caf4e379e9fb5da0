"""`w2vkit probe FEATURES_DIR --labels LABELS`: layer-wise linear probes of extracted features.

utterance task (default): LABELS is `relative_path<TAB>label` lines, or a table with a header
`path<TAB>voice<TAB>sentence...` (`--target` picks the column). frame task: LABELS is a frame
labels file (`relative_path<TAB>l1 l2 ...`, one label per feature frame) and `--utterances` the
table whose columns `--split-by` holds out. Baselines (`--baseline logmel random`) run on the same
audio, items and frames. Writes OUT/probe.json and OUT/probe.png; docs/probes.md explains them.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

from w2vkit.config import UsageError
from w2vkit.probe.baselines import BASELINES, logmel_source, random_model_source, read_meta
from w2vkit.probe.data import features_source, load_task, probe_sources
from w2vkit.probe.linear import format_table, plot

TASKS = ("utterance", "frame")
LOGMEL_CONTEXT = 4  # the log-mel baseline is also probed with ±4 frames: a 180 ms window


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("features", type=Path, help="a directory written by `w2vkit extract`")
    parser.add_argument(
        "--labels",
        type=Path,
        required=True,
        help="utterance task: path<TAB>label lines or a table with a header; frame task: a frame "
        "labels file",
    )
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="utterance",
        help="utterance: one label per file, frame-averaged features; frame: one label per frame",
    )
    parser.add_argument("--target", default=None, help="label column of a table (utterance task)")
    parser.add_argument(
        "--utterances",
        type=Path,
        default=None,
        help="table (header path<TAB>voice<TAB>...) holding the --split-by columns",
    )
    parser.add_argument(
        "--split-by",
        default="",
        help="comma-separated columns whose values are held out together, e.g. voice or "
        "voice,sentence: test items share none of them with training (default: stratified)",
    )
    parser.add_argument(
        "--test-values",
        action="append",
        default=[],
        metavar="COLUMN=V1,V2",
        help="hold out these values of a --split-by column instead of a random draw (repeatable)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.25,
        help="share of each --split-by column's values (or of each class) held out (0.25)",
    )
    parser.add_argument(
        "--context", type=int, default=0, help="frame task: stack ±K neighbouring frames (0)"
    )
    parser.add_argument(
        "--baseline",
        action="append",
        choices=BASELINES,
        default=[],
        help="also probe log-mel (with and without ±4 frames) and/or the architecture at random "
        "initialisation, on the same audio (repeatable)",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="architecture for --baseline random "
        "(default: the checkpoint recorded in FEATURES/meta.json)"
    )  # fmt: skip
    parser.add_argument(
        "--manifest", type=Path, default=None, help="audio for the baselines (default: the "
        "manifest recorded in FEATURES/meta.json)"
    )  # fmt: skip
    parser.add_argument(
        "--max-train-frames", type=int, default=20_000, help="frame task: subsample (20000)"
    )
    parser.add_argument(
        "--max-test-frames", type=int, default=10_000, help="frame task: subsample (10000)"
    )
    parser.add_argument("--c", type=float, default=1.0, help="inverse L2 strength (sklearn C; 1)")
    parser.add_argument("--max-iter", type=int, default=500, help="L-BFGS iterations (500)")
    parser.add_argument(
        "--threads", type=int, default=1, help="BLAS/OpenMP threads per fit (1: see docs)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the frame draw")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: FEATURES/probe_TARGET, TARGET being --target or the "
        "labels file's stem)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.context < 0 or args.c <= 0 or args.max_iter < 1:
            raise ValueError("need --context >= 0, --c > 0 and --max-iter >= 1")
        if min(args.max_train_frames, args.max_test_frames, args.threads) < 1:
            raise ValueError("--max-train-frames, --max-test-frames and --threads must be >= 1")
        if args.context and args.task != "frame":
            raise ValueError("--context applies to the frame task only")
        split_by = [c.strip() for c in args.split_by.split(",") if c.strip()]
        test_values = {}
        for spec in args.test_values:
            column, sep, values = spec.partition("=")
            if not sep or not values:
                raise ValueError(f"--test-values expects COLUMN=V1,V2, got {spec!r}")
            test_values[column.strip()] = [v.strip() for v in values.split(",") if v.strip()]
        task = load_task(
            args.features,
            args.labels,
            task=args.task,
            target=args.target,
            utterances_path=args.utterances,
            split_by=split_by,
        )
        sources = _sources(args, task.paths)
        result = probe_sources(
            task,
            sources,
            test_fraction=args.test_fraction,
            seed=args.seed,
            max_train_frames=args.max_train_frames,
            max_test_frames=args.max_test_frames,
            c=args.c,
            max_iter=args.max_iter,
            test_values=test_values,
            threads=args.threads,
            log=lambda message: print(f"w2vkit probe: {message}", file=sys.stderr, flush=True),
        )
    except (OSError, ValueError) as err:
        raise UsageError(str(err)) from err
    if task.skipped:
        print(
            f"w2vkit probe: {len(task.skipped)} labelled items were skipped by extraction "
            f"(e.g. {task.skipped[0]}); probing the other {len(task.paths)}",
            file=sys.stderr,
        )
    for note in result.warnings:
        print(f"w2vkit probe: warning: {note}", file=sys.stderr)
    target = args.target or args.labels.stem
    # One folder per target by default, so a phone probe and a voice probe of the same features
    # do not overwrite each other's probe.json.
    out = args.out if args.out is not None else args.features / f"probe_{target}"
    out.mkdir(parents=True, exist_ok=True)
    report = {
        **result.to_dict(),
        "features": str(args.features),
        "labels": str(args.labels),
        "target": args.target,
        "utterances": str(args.utterances) if args.utterances else None,
        "skipped": task.skipped,
    }
    (out / "probe.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(result, out / "probe.png", title=f"{args.task} probe: {target}")
    print(format_table(result))
    print(f"w2vkit probe: wrote {out / 'probe.json'} and {out / 'probe.png'}")
    return 0


def _sources(args: argparse.Namespace, paths: list[str]) -> list:
    """(name, opener, contexts) for the features and each requested baseline."""
    sources: list = [("pretrained", partial(features_source, args.features, paths), [args.context])]
    if not args.baseline:
        return sources
    from w2vkit.interop import read_model

    meta = read_meta(args.features)
    manifest = args.manifest or meta.get("manifest")
    checkpoint = args.checkpoint or meta.get("checkpoint")
    if not manifest or not checkpoint:
        raise ValueError(
            f"{args.features / 'meta.json'} records no manifest or checkpoint: pass --manifest "
            "and --checkpoint for the baselines"
        )
    cfg = read_model(checkpoint).cfg
    logmel_contexts = [0, LOGMEL_CONTEXT] if args.task == "frame" else [0]
    if "random" in args.baseline:
        layers = list(meta["layers"])
        opener = partial(
            random_model_source,
            manifest,
            paths,
            cfg,
            layers,
            normalize=bool(meta.get("normalize", False)),
            seed=args.seed,
            max_samples=meta.get("max_samples"),
        )
        sources.append(("random", opener, [args.context]))
    if "logmel" in args.baseline:
        sources.append(("logmel", partial(logmel_source, manifest, paths, cfg), logmel_contexts))
    return sources
