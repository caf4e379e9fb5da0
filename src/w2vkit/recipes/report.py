"""`w2vkit report RUN_DIR`: report.html and report.md with plots of a pretraining run.

Health findings first (`w2vkit.pretrain.wav2vec2_health`), then the training and validation curves,
codebook usage over validation audio, probe results (RUN_DIR/probe*/probe.json or --probe) and a
PCA of utterance embeddings coloured by voice. docs/report.md describes each part.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from w2vkit.config import UsageError
from w2vkit.report.build import build_report, write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a `w2vkit pretrain` output directory")
    parser.add_argument(
        "--out", type=Path, default=None, help="report directory (default: RUN_DIR)"
    )
    parser.add_argument(
        "--probe",
        type=Path,
        action="append",
        default=[],
        help="a probe.json to include (repeatable; default: RUN_DIR/probe*/probe.json)",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="for codebook usage (RUN_DIR's best/last)"
    )
    parser.add_argument(
        "--valid-manifest", type=Path, default=None, help="audio for codebook usage (config's)"
    )
    parser.add_argument(
        "--max-valid-items", type=int, default=200, help="files for codebook usage (200)"
    )


def run(args: argparse.Namespace) -> int:
    out = args.out if args.out is not None else args.run_dir
    try:
        report = build_report(
            args.run_dir,
            out,
            probe_paths=args.probe,
            checkpoint=args.checkpoint,
            valid_manifest=args.valid_manifest,
            max_valid_items=args.max_valid_items,
        )
    except (OSError, ValueError) as err:
        raise UsageError(str(err)) from err
    html_path, md_path = write_report(report, out)
    for finding in report.findings:
        print(finding.format(), file=sys.stderr)
    print(
        f"w2vkit report: wrote {html_path} and {md_path} ({len(report.findings)} health findings)"
    )
    return 0
