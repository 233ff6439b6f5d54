"""Giving freed memory back to the operating system where the C allocator would keep it.

glibc serves allocations below its mmap threshold (which grows to 32 MB as large blocks are freed) from heaps
it trims only at their top, so a build that frees thousands of mid-sized float64 matrices holds on to them:
measured on a DiT-XL/2 build cut to 4 blocks, the resident memory of the plan solves grew by 0.4 GB over four
stages, none of it live. ``malloc_trim`` hands every free page back; elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable

__all__ = ["release_freed_memory"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)  # glibc's; musl has none


def release_freed_memory() -> None:
    """Return the allocator's free pages to the OS (a few milliseconds; call between large, freed steps)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
