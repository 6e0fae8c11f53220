"""The memory a crash dump must describe: System RAM minus the crash reservation.

kexec-tools (``get_crash_memory_ranges()`` + ``exclude_region()``,
kexec/arch/i386/crashdump-x86.c; kexec-internals.md §1.8) turns every
``/proc/iomem`` line whose name contains ``System RAM`` (top level or nested, e.g.
``System RAM (virtio_mem)``, ``System RAM (kmem)``) into a RAM range and cuts every
``Crash kernel`` range (normal and ``,low``) and the ``GART`` aperture out of them,
splitting a range in two where an exclusion sits in its middle.  The capture
kernel, purgatory and the elfcorehdr itself live inside the crash reservation, so
they are excluded with it.

This is pure interval arithmetic on inclusive ``[start, end]`` ranges.  The result is
ascending and disjoint; adjacent RAM lines stay separate ranges (one PT_LOAD per
``/proc/iomem`` line, as kexec-tools does), overlapping ones (which a sane
``/proc/iomem`` never has) are merged so no byte is described twice.
"""

from __future__ import annotations

from collections.abc import Iterable

from kdumpd.core.topology import MemRange, Topology

#: ``/proc/iomem`` names whose ranges never appear in the crash dump.
EXCLUDED_RESOURCES = frozenset({"Crash kernel", "GART"})


def crash_memory_ranges(topology: Topology) -> tuple[MemRange, ...]:
    """Every System RAM* range of ``topology`` minus every crashkernel (and GART) range."""
    ram: list[tuple[int, int]] = []
    cut: list[tuple[int, int]] = []
    for r in topology.iomem:
        if "System RAM" in r.name:
            ram.append((r.start, r.end))
        elif r.name in EXCLUDED_RESOURCES:
            cut.append((r.start, r.end))
    return subtract(ram, cut)


def subtract(
    ranges: Iterable[tuple[int, int]], exclusions: Iterable[tuple[int, int]]
) -> tuple[MemRange, ...]:
    """``ranges`` minus ``exclusions`` (both inclusive ``(start, end)`` pairs, any order).

    Returns ascending, disjoint :class:`MemRange` values.  Empty or inverted input
    pairs (``end < start``) are ignored.
    """
    ram = _merge_overlapping(sorted(p for p in ranges if p[0] <= p[1]))
    cut = _merge_overlapping(sorted(p for p in exclusions if p[0] <= p[1]))
    if not cut:
        return tuple([MemRange(s, e) for s, e in ram])

    out: list[MemRange] = []
    append = out.append
    i = 0
    n_cut = len(cut)
    for start, end in ram:
        # Skip exclusions that end before this range; they cannot touch later ones.
        while i < n_cut and cut[i][1] < start:
            i += 1
        j = i
        lo = start
        while j < n_cut and cut[j][0] <= end:
            c_start, c_end = cut[j]
            if c_start > lo:
                append(MemRange(lo, c_start - 1))
            lo = max(lo, c_end + 1)
            if c_end >= end:
                break
            j += 1
        if lo <= end:
            append(MemRange(lo, end))
    return tuple(out)


def _merge_overlapping(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge overlapping (not merely adjacent) sorted pairs."""
    if len(pairs) < 2:
        return pairs
    merged = [pairs[0]]
    for start, end in pairs[1:]:
        last_start, last_end = merged[-1]
        if start <= last_end:
            if end > last_end:
                merged[-1] = (last_start, end)
        else:
            merged.append((start, end))
    return merged
