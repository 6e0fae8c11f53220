from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from kdumpd.core.ranges import crash_memory_ranges, subtract
from kdumpd.core.topology import MemRange, Resource, Topology

from .elfcorehdr_support import topologies


def _topology(*lines: tuple[int, int, str, int]) -> Topology:
    return Topology(
        arch="x86_64",
        possible_cpus=(0,),
        present_cpus=(0,),
        online_cpus=(0,),
        crash_notes=(),
        iomem=tuple(Resource(s, e, n, d) for s, e, n, d in lines),
    )


def test_crashkernel_in_the_middle_splits_the_range() -> None:
    t = _topology(
        (0x1000, 0x9FFFF, "System RAM", 0),
        (0x100000, 0xBFFFFFFF, "System RAM", 0),
        (0x1000000, 0x1FFFFFF, "Kernel code", 1),
        (0xA0000000, 0xAFFFFFFF, "Crash kernel", 1),
        (0x100000000, 0x23FFFFFFF, "System RAM", 0),
    )
    assert crash_memory_ranges(t) == (
        MemRange(0x1000, 0x9FFFF),
        MemRange(0x100000, 0x9FFFFFFF),
        MemRange(0xB0000000, 0xBFFFFFFF),
        MemRange(0x100000000, 0x23FFFFFFF),
    )


def test_low_and_high_crashkernel_both_excluded_and_edges_trimmed() -> None:
    t = _topology(
        (0x100000, 0x7FFFFFFF, "System RAM", 0),
        (0x100000, 0x10FFFFF, "Crash kernel", 1),  # ,low at the very start
        (0x100000000, 0x1FFFFFFFF, "System RAM", 0),
        (0x1F0000000, 0x1FFFFFFFF, "Crash kernel", 1),  # at the very end
    )
    assert crash_memory_ranges(t) == (
        MemRange(0x1100000, 0x7FFFFFFF),
        MemRange(0x100000000, 0x1EFFFFFFF),
    )


def test_every_system_ram_variant_nested_or_not_and_nothing_else() -> None:
    t = _topology(
        (0x0, 0xFFF, "Reserved", 0),
        (0x1000, 0x9FFFF, "System RAM", 0),
        (0xA0000, 0xFFFFF, "PCI Bus 0000:00", 0),
        (0x100000000, 0x13FFFFFFF, "dax0.0", 0),
        (0x100000000, 0x13FFFFFFF, "System RAM (kmem)", 1),
        (0x140000000, 0x17FFFFFFF, "virtio0", 0),
        (0x140000000, 0x147FFFFFF, "System RAM (virtio_mem)", 1),
        (0x180000000, 0x18FFFFFFF, "Persistent Memory", 0),
        (0xFED00000, 0xFED003FF, "HPET 0", 0),
    )
    assert crash_memory_ranges(t) == (
        MemRange(0x1000, 0x9FFFF),
        MemRange(0x100000000, 0x13FFFFFFF),
        MemRange(0x140000000, 0x147FFFFFF),
    )


def test_gart_aperture_is_excluded_like_kexec_tools() -> None:
    t = _topology((0x0, 0xFFFFFFF, "System RAM", 0), (0x4000000, 0x7FFFFFF, "GART", 0))
    assert crash_memory_ranges(t) == (MemRange(0x0, 0x3FFFFFF), MemRange(0x8000000, 0xFFFFFFF))


def test_adjacent_ram_lines_stay_separate_overlapping_ones_merge() -> None:
    t = _topology(
        (0x0, 0xFFF, "System RAM", 0),
        (0x1000, 0x1FFF, "System RAM", 0),
        (0x3000, 0x4FFF, "System RAM", 0),
        (0x4000, 0x5FFF, "System RAM (kmem)", 0),
    )
    assert crash_memory_ranges(t) == (
        MemRange(0x0, 0xFFF),
        MemRange(0x1000, 0x1FFF),
        MemRange(0x3000, 0x5FFF),
    )


def test_crashkernel_covering_everything_leaves_nothing() -> None:
    t = _topology((0x1000, 0x1FFF, "System RAM", 0), (0x0, 0xFFFFF, "Crash kernel", 0))
    assert crash_memory_ranges(t) == ()


def test_crashkernel_spanning_several_ram_ranges() -> None:
    assert subtract([(0, 9), (20, 29), (40, 49)], [(5, 44)]) == (
        MemRange(0, 4),
        MemRange(45, 49),
    )


def test_no_ram_no_ranges() -> None:
    assert crash_memory_ranges(_topology()) == ()


# A small address space lets the property be checked byte by byte (brute force).
_SPACE = 96
_pairs = st.lists(
    st.tuples(st.integers(0, _SPACE - 1), st.integers(0, _SPACE - 1)).map(
        lambda p: (min(p), max(p))
    ),
    max_size=8,
)


@given(ram=_pairs, cut=_pairs)
@settings(max_examples=400, deadline=None)
def test_subtract_matches_byte_brute_force(
    ram: list[tuple[int, int]], cut: list[tuple[int, int]]
) -> None:
    out = subtract(ram, cut)
    covered = {a for s, e in ram for a in range(s, e + 1)}
    excluded = {a for s, e in cut for a in range(s, e + 1)}
    got = [a for r in out for a in range(r.start, r.end + 1)]
    # Every byte exactly once, and exactly the expected bytes.
    assert len(got) == len(set(got))
    assert set(got) == covered - excluded
    # Ascending, disjoint, non-empty.
    assert all(r.start <= r.end for r in out)
    assert all(a.end < b.start for a, b in itertools.pairwise(out))
    # Adjacent-but-distinct input lines are never glued: every pair of neighbouring
    # bytes inside one output range is inside one input range (overlaps may merge).
    for r in out:
        for a in range(r.start, r.end):
            assert any(s <= a and a + 1 <= e for s, e in ram), (r, a)


@given(topologies(high_addresses=True))
@settings(deadline=None)
def test_random_topologies_no_range_overlaps_a_crashkernel(topology: Topology) -> None:
    out = crash_memory_ranges(topology)
    for r in out:
        assert not any(r.overlaps(c) for c in topology.crashkernel)
        assert any(s.start <= r.start and r.end <= s.end for s in topology.system_ram)
    total = sum(r.size for r in out)
    ram_total = sum(r.size for r in topology.system_ram)
    assert total <= ram_total
    # Nothing but crashkernel bytes goes missing.
    lost = ram_total - total
    assert lost <= sum(
        max(0, min(r.end, c.end) - max(r.start, c.start) + 1)
        for r in topology.system_ram
        for c in topology.crashkernel
    )
