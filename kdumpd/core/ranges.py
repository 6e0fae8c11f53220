"""The memory a crash dump must describe: System RAM minus the crash reservation.

kexec-tools (``get_crash_memory_ranges()`` + ``exclude_region()``,
kexec/arch/i386/crashdump-x86.c; docs/kernel-interfaces.md §5) turns every
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

import gc
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from operator import le, lt

from kdumpd.core.topology import MemRange, Resource, Topology


def round_up(value: int, align: int) -> int:
    """``value`` rounded up to a multiple of ``align`` (any positive ``align``)."""
    return -(-value // align) * align


#: ``/proc/iomem`` names whose ranges never appear in the crash dump.
EXCLUDED_RESOURCES = frozenset({"Crash kernel", "GART"})


def crash_memory_ranges(topology: Topology) -> tuple[MemRange, ...]:
    """Every System RAM* range of ``topology`` minus every crashkernel (and GART) range.

    The cyclic garbage collector is paused while the (up to 8,192+) result objects
    are created - it would otherwise scan them repeatedly, about 15 % of the run time
    (same approach as :func:`kdumpd.core.iomem.parse_iomem`); it is restored before
    returning.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _crash_memory_ranges(topology)
    finally:
        if enabled:
            gc.enable()


def _crash_memory_ranges(topology: Topology) -> tuple[MemRange, ...]:
    return ram_minus_reservations(topology.iomem)


def ram_minus_reservations(iomem: Iterable[Resource]) -> tuple[MemRange, ...]:
    """:func:`crash_memory_ranges` of ``/proc/iomem`` lines alone (no snapshot)."""
    starts: list[int] = []
    ends: list[int] = []
    cut: list[tuple[int, int]] = []
    for r in iomem:
        name = r.name
        if "System RAM" in name:
            starts.append(r.start)
            ends.append(r.end)
        elif name in EXCLUDED_RESOURCES:
            cut.append((r.start, r.end))
    return _subtract_columns(starts, ends, cut)


def subtract(
    ranges: Iterable[tuple[int, int]], exclusions: Iterable[tuple[int, int]]
) -> tuple[MemRange, ...]:
    """``ranges`` minus ``exclusions`` (both inclusive ``(start, end)`` pairs, any order).

    Returns ascending, disjoint :class:`MemRange` values.  Empty or inverted input
    pairs (``end < start``) are ignored.
    """
    pairs = list(ranges)
    return _subtract_columns([p[0] for p in pairs], [p[1] for p in pairs], list(exclusions))


def _subtract_columns(
    starts: list[int], ends: list[int], exclusions: list[tuple[int, int]]
) -> tuple[MemRange, ...]:
    """The work horse, on columns (``starts[i]``, ``ends[i]``).

    Written for 8,192+ ranges: /proc/iomem is already ascending and disjoint, which
    is checked at C speed; only the few ranges an exclusion touches are handled in
    Python, located by bisection.
    """
    n = len(starts)
    if n > 1 and not (all(map(le, starts, ends)) and all(map(lt, ends, starts[1:]))):
        pairs = _merge_overlapping(
            sorted(p for p in zip(starts, ends, strict=True) if p[0] <= p[1])
        )
        starts = [p[0] for p in pairs]
        ends = [p[1] for p in pairs]
    elif n == 1 and starts[0] > ends[0]:
        return ()
    else:
        starts = starts.copy()  # the remainder of a split range is written back below
    cut = _merge_overlapping(sorted(p for p in exclusions if p[0] <= p[1]))

    out: list[MemRange] = []
    pos = 0  # ranges before ``pos`` are emitted
    for c_start, c_end in cut:
        first = bisect_left(ends, c_start, pos)  # first range ending at/after the cut
        stop = bisect_right(starts, c_end, first)  # first range starting after it
        if first == stop:
            continue  # the cut falls into a gap
        out.extend(map(MemRange, starts[pos:first], ends[pos:first]))
        if starts[first] < c_start:
            out.append(MemRange(starts[first], c_start - 1))
        last = stop - 1
        if ends[last] > c_end:
            # Keep the remainder; a later cut may still trim it.
            starts[last] = c_end + 1
            pos = last
        else:
            pos = stop
    out.extend(map(MemRange, starts[pos:], ends[pos:]))
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
