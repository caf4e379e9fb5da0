"""`w2vkit probe FEATURES_DIR --labels LABELS.tsv`: layer-wise linear probing of extracted features.

LABELS.tsv holds `relative_path<TAB>label` lines (paths as in FEATURES_DIR/index.tsv, i.e. as in
the manifest). For each stored layer a logistic regression is fit on a seeded, stratified split
of the labelled utterances; the test accuracy per layer is printed and written to
OUT/probe.json and OUT/probe.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from w2vkit.embed.probe import format_table, load_labelled_vectors, plot, probe_layers

TASKS = ("utterance",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("features", type=Path, help="a directory written by `w2vkit extract`")
    parser.add_argument(
        "--labels", type=Path, required=True, help="TSV of relative_path<TAB>label lines"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: FEATURES/probe)"
    )
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="utterance",
        help="utterance: one label per file, probed on frame-averaged features",
    )
    parser.add_argument(
        "--epochs", type=int, default=200, help="L-BFGS iterations (full batch; default 200)"
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=1e-3,
        help="L2 penalty on the weights, added to the mean cross-entropy (default 1e-3)",
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.25, help="held-out share per class (default 0.25)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split")


def run(args: argparse.Namespace) -> int:
    try:
        layers, vectors, labels, skipped = load_labelled_vectors(args.features, args.labels)
        result = probe_layers(
            vectors,
            layers,
            labels,
            test_fraction=args.test_fraction,
            weight_decay=args.weight_decay,
            max_iter=args.epochs,
            seed=args.seed,
        )
    except (OSError, ValueError) as err:
        print(f"w2vkit probe: {err}", file=sys.stderr)
        return 2
    if skipped:
        print(
            f"w2vkit probe: {len(skipped)} labelled items were skipped by extraction "
            f"(e.g. {skipped[0]}); probing the other {len(labels)}",
            file=sys.stderr,
        )
    out = args.out if args.out is not None else args.features / "probe"
    out.mkdir(parents=True, exist_ok=True)
    report = {
        **result.to_dict(),
        "task": args.task,
        "features": str(args.features),
        "labels": str(args.labels),
        "skipped": skipped,
    }
    (out / "probe.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(result, out / "probe.png", title=f"linear probe: {args.labels.stem}")
    print(format_table(result))
    print(f"w2vkit probe: wrote {out / 'probe.json'} and {out / 'probe.png'}")
    return 0
