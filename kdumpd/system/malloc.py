"""Return the heap that start-up freed to the kernel (glibc ``malloc_trim(3)``).

A long-running daemon pays for its imports and for building its configuration once;
most of the temporary objects are freed again, but glibc keeps the pages.  Trimming
once, after the first consistent image, gives back about 1.5 MiB of an idle kdumpd's
~40 MiB (bench/storm.py, "idle RSS").  Elsewhere than glibc this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("kdumpd.system.malloc")


def trim() -> bool:
    """``malloc_trim(0)``; True when memory was released (False also off glibc)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        fn = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return False
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    released = bool(fn(0))
    log.debug("malloc_trim(0): %s", "released memory" if released else "nothing to release")
    return released
