from __future__ import annotations

import ctypes.util

import pytest

from kdumpd.system import malloc


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_trim_gives_freed_heap_back() -> None:
    lib = ctypes.util.find_library("c")
    if lib is None or not hasattr(ctypes.CDLL(lib), "malloc_trim"):
        pytest.skip("not glibc: malloc_trim does not exist, trim() is a no-op")
    # 64 MiB in small objects (pymalloc arenas + malloc), touched, then freed
    junk = [bytes(1000) for _ in range(64 * 1024)]
    del junk
    before = _rss_kib()
    assert malloc.trim() is True
    assert _rss_kib() < before
