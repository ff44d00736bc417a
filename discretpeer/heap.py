"""Keep freed memory in the process instead of handing it back to the kernel at once (glibc).

A bulk receiver frees and re-allocates megabytes of stream buffers every millisecond. glibc
gives the top of the heap back to the kernel as soon as more than 128 KB of it is free (and
serves large blocks by mmap), so each new buffer faults its pages in again: 15,000-40,000 page
faults per second on the receiving side, ~30 % of its CPU time at 1350-byte datagrams. Whether
that happens depended on where long-lived objects sat in the heap: a process that compiled its
modules at import (no ``.pyc``) kept objects above the freed area and never trimmed, which is the
".pyc effect" of issue 18 (benchmarks/README.md). A fixed trim threshold and top pad end it for
both. Process-wide, set once, only where glibc's ``mallopt`` exists; elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 64 * 1024 * 1024  # free heap top kept before giving it back to the kernel
TOP_PAD = 16 * 1024 * 1024  # extra heap asked for at each growth
# setting the two above turns off glibc's sliding mmap threshold (128 KB then): keep large
# buffers (a stream's megabyte) on the heap too, or each would be mmapped and faulted in afresh
MMAP_THRESHOLD = 32 * 1024 * 1024

_state: bool | None = None


def keep_freed_memory() -> bool:
    """Set the trim threshold and top pad once per process; True if glibc took them."""
    global _state
    if _state is not None:
        return _state
    _state = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success (musl's stub returns 0: nothing to tune there)
    _state = all(
        mallopt(option, value)
        for option, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (M_TOP_PAD, TOP_PAD),
        )
    )
    return _state
