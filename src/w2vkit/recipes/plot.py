"""`w2vkit plot RUN_DIR`: the training and validation curves of a run alone, as PNGs in
OUT/plots (default RUN_DIR/plots); `w2vkit report` puts them in a page with the rest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from w2vkit.config import UsageError
from w2vkit.report.build import build_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a `w2vkit pretrain` output directory")
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: RUN_DIR)"
    )


def run(args: argparse.Namespace) -> int:
    out = args.out if args.out is not None else args.run_dir
    try:
        report = build_report(args.run_dir, out, curves_only=True)
    except (OSError, ValueError) as err:
        raise UsageError(str(err)) from err
    for finding in report.findings:
        print(finding.format(), file=sys.stderr)
    for section in report.sections:
        for image in section.images:
            print(out / image)
    return 0
