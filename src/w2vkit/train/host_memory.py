"""Keep freed host memory in the process while training on CPU.

glibc's malloc hands every freed block above its mmap threshold (128 KiB, raised as it goes up to
32 MiB) back to the kernel, which zero-fills fresh pages for the next allocation of the same
size: a BASE update on CPU allocates and frees gigabytes of activations, 120-280 thousand page
faults and 0.3-0.9 s of system time per update on two cores. With the thresholds raised, freed
blocks stay in the heap for the next update; the peak RSS stays within 1% (bench/results.md).
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_THRESHOLD_BYTES = 1 << 30  # blocks below 1 GiB come from the heap and stay there once freed
_OLDER_GLIBC_MMAP_MAX = 32 << 20  # older glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2


def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds for this process (and the data workers it forks).

    True when glibc took them; False where there is no glibc (macOS, Windows, musl's no-op
    `mallopt`), and nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim = mallopt(_M_TRIM_THRESHOLD, _THRESHOLD_BYTES) == 1
    mmap = mallopt(_M_MMAP_THRESHOLD, _THRESHOLD_BYTES) == 1
    mmap = mmap or mallopt(_M_MMAP_THRESHOLD, _OLDER_GLIBC_MMAP_MAX) == 1
    return trim and mmap


__all__ = ["keep_freed_memory"]
