"""Keep freed host memory in the process while training on CPU.

glibc's malloc hands every freed block above its mmap threshold (128 KiB, raised as it goes up to
32 MiB) back to the kernel, which zero-fills fresh pages for the next allocation of the same
size: a BASE update on CPU allocates and frees gigabytes of activations, 150-250 thousand page
faults and 0.3-0.9 s of system time per update on two cores. With the thresholds raised, freed
blocks stay in the heap for the next update; the peak RSS stays within 1% (bench/results.md).
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_THRESHOLD_BYTES = 1 << 30  # blocks below 1 GiB come from the heap and stay there once freed


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
    return all(
        mallopt(param, _THRESHOLD_BYTES) == 1 for param in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD)
    )


__all__ = ["keep_freed_memory"]
