"""`keep_freed_memory`: freed blocks are reused, not faulted in afresh (glibc only)."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

# Allocates and frees a 64 MiB tensor 20 times; prints the page faults of the last ten rounds
# (the heap settles in the first few).
_SCRIPT = """
import resource, sys, torch
from w2vkit.train.host_memory import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
def round_trip():
    torch.ones(16 << 20).sum()  # 64 MiB, written: every page touched
for _ in range(10):
    round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    round_trip()
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    took, kept = _faults("keep")
    _, default = _faults("default")
    assert took == "True"
    # The default allocator faults the 64 MiB in every round (16384 faults with 4 KiB pages and
    # no transparent huge pages; far fewer with them, where there is little to win).
    pages = 10 * (64 << 20) // resource.getpagesize()
    if default < pages // 4:
        pytest.skip(f"{default} faults in 10 rounds: huge pages back this allocation already")
    assert kept < default / 20
