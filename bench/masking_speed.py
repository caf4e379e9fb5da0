"""Time compute_span_mask against the slow literal fairseq loop (tests/test_masking.py) on CPU.

    PYTHONPATH=src python bench/masking_speed.py [--threads 1]

Prints milliseconds per (B, T) mask for the wav2vec 2.0 BASE settings (mask_prob 0.65, span 10,
min_spans 2, equal counts) at T = 781 (15.6 s, the longest crop); no_overlap for comparison.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from functools import partial
from pathlib import Path

import torch

from w2vkit.model.masking import compute_span_mask

ROOT = Path(__file__).resolve().parents[1]


def load_reference():
    """The literal loop version lives in the test file; import it from there."""
    path = ROOT / "tests" / "test_masking.py"
    spec = importlib.util.spec_from_file_location("test_masking", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_span_mask


def ms_per_call(fn, repeats: int) -> float:
    """CPU time of this process per call: steadier than wall time on a shared machine."""
    fn()  # warm-up
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--num-frames", type=int, default=781)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference = load_reference()
    g = torch.Generator().manual_seed(0)
    base = {"mask_prob": 0.65, "span_length": 10, "min_spans": 2}
    print(f"threads={args.threads} T={args.num_frames}  (CPU ms per mask)")
    for name, extra in (("default", {}), ("no_overlap", {"no_overlap": True, "min_space": 1})):
        for batch_size in (8, 64):
            shape = (batch_size, args.num_frames)
            kwargs = dict(base, **extra, generator=g)
            fast = ms_per_call(partial(compute_span_mask, shape, **kwargs), 100)
            slow = ms_per_call(partial(reference, shape, None, **kwargs), 3)
            print(
                f"{name:>10} B={batch_size:<3} vectorised {fast:7.3f}   literal loop {slow:8.2f}"
                f"   x{slow / fast:.0f}"
            )


if __name__ == "__main__":
    main()
