from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdumpd.arch import Arch, get_arch
from kdumpd.arch.base import DEFAULT_MAX_RANGES, MIN_ELFCOREHDR_SIZE
from kdumpd.arch.x86_64 import EM_X86_64, X86_64
from kdumpd.core.elfcorehdr import Elfcorehdr, elfcorehdr_capacity
from kdumpd.core.errors import CapacityError, UnsupportedError
from kdumpd.core.image import PAGE_SIZE, CrashImage, SegmentKind
from kdumpd.core.topology import (
    CrashNote,
    KernelCapabilities,
    MemRange,
    Resource,
    Topology,
    VmcoreInfo,
)

from .elfcorehdr_support import topologies

ARCH = X86_64()
GIB = 1 << 30


def _topology(
    crash: tuple[tuple[int, int], ...] = ((0x2F000000, 0x3EFFFFFF),),
    ncpus: int = 4,
    ram: tuple[tuple[int, int], ...] = ((0x100000, 0x3FFDFFFF), (0x100000000, 0x13FFFFFFF)),
    capabilities: KernelCapabilities | None = None,
) -> Topology:
    iomem = [Resource(s, e, "System RAM", 0) for s, e in ram]
    iomem += [Resource(s, e, "Crash kernel", 1) for s, e in crash]
    cpus = tuple(range(ncpus))
    return Topology(
        arch="x86_64",
        possible_cpus=cpus,
        present_cpus=cpus,
        online_cpus=cpus,
        crash_notes=tuple(CrashNote(c, 0x3F83A400 + c * 0x80000, 0x1A8) for c in cpus),
        iomem=tuple(iomem),
        vmcoreinfo=VmcoreInfo(0x13D8000, 1024),
        capabilities=capabilities or KernelCapabilities(),
    )


# --- arch interface -------------------------------------------------------------


def test_get_arch_x86_64_implements_the_protocol() -> None:
    arch = get_arch("x86_64")
    assert isinstance(arch, Arch)
    assert arch.name == "x86_64"
    assert arch.elf_machine == EM_X86_64 == 62
    assert arch.regenerated_segments == {SegmentKind.ELFCOREHDR}


def test_unknown_arch_is_unsupported_and_named() -> None:
    with pytest.raises(UnsupportedError, match="'s390x'"):
        get_arch("s390x")


def test_digested_segments_leave_out_purgatory_and_with_hotplug_the_elfcorehdr() -> None:
    without = ARCH.digested_segments(hotplug=False)
    with_hp = ARCH.digested_segments(hotplug=True)
    assert SegmentKind.PURGATORY not in without and SegmentKind.PURGATORY not in with_hp
    assert SegmentKind.ELFCOREHDR in without
    assert SegmentKind.ELFCOREHDR not in with_hp
    assert {SegmentKind.KERNEL, SegmentKind.INITRD, SegmentKind.SETUP} <= with_hp


# --- capacity policy --------------------------------------------------------------


def test_capacity_from_the_kernel_is_a_whole_number_of_pages() -> None:
    # x86 CONFIG_NR_CPUS_DEFAULT 8192 + CRASH_MAX_MEMORY_RANGES 8192: (2 + 16384) * 56,
    # plus the 64-byte Ehdr the sysfs value leaves out, page-aligned (225 pages): the
    # buffer is the whole segment the kernel may rewrite in place.
    caps = KernelCapabilities(crash_elfcorehdr_size=917_616)
    assert ARCH.elfcorehdr_capacity(_topology(capabilities=caps)) == 921_600


def test_capacity_from_the_kernel_covers_more_possible_cpus_than_nr_cpus_default() -> None:
    # NR_CPUS_DEFAULT 64 (no MAXSMP): the sysfs value counts 64 CPUs, but the kernel's
    # rebuild writes a PT_NOTE for each of the 512 possible ones.
    caps = KernelCapabilities(crash_elfcorehdr_size=(2 + 64 + 8192) * 56)
    t = _topology(ncpus=512, capabilities=caps)
    assert ARCH.elfcorehdr_capacity(t) == 491_520 >= 64 + (512 + 2 + 8192) * 56


def test_capacity_from_the_kernel_never_below_what_its_rebuild_or_the_topology_needs() -> None:
    caps = KernelCapabilities(crash_elfcorehdr_size=100)
    t = _topology(ncpus=40, capabilities=caps)
    assert ARCH.elfcorehdr_capacity(t) == 462_848 >= 64 + (40 + 2 + 8192) * 56
    ram = tuple((i * 2 * 0x8000000, i * 2 * 0x8000000 + 0x7FFFFFF) for i in range(9000))
    t = _topology(crash=(), ram=ram, ncpus=2, capabilities=caps)
    assert ARCH.elfcorehdr_capacity(t) == 507_904 >= elfcorehdr_capacity(2, 9000)


def test_default_capacity_is_possible_cpus_plus_8192_ranges() -> None:
    t = _topology(ncpus=4)
    assert ARCH.elfcorehdr_capacity(t) == elfcorehdr_capacity(4, DEFAULT_MAX_RANGES)


def test_default_capacity_grows_with_more_ranges_than_the_default() -> None:
    ram = tuple((i * 2 * 0x8000000, i * 2 * 0x8000000 + 0x7FFFFFF) for i in range(9000))
    t = _topology(crash=(), ram=ram, ncpus=2)
    assert ARCH.elfcorehdr_capacity(t) == elfcorehdr_capacity(2, 9000)


def test_overrides_win_and_have_a_16k_floor() -> None:
    caps = KernelCapabilities(crash_elfcorehdr_size=917_616)
    t = _topology(capabilities=caps)
    assert ARCH.elfcorehdr_capacity(t, max_cpus=512, max_ranges=1024) == elfcorehdr_capacity(
        512, 1024
    )
    assert ARCH.elfcorehdr_capacity(t, max_cpus=1, max_ranges=1) == MIN_ELFCOREHDR_SIZE
    # Only one given: the other comes from the default policy inputs.
    assert ARCH.elfcorehdr_capacity(t, max_ranges=0) == MIN_ELFCOREHDR_SIZE
    assert ARCH.elfcorehdr_capacity(t, max_cpus=0) == elfcorehdr_capacity(0, DEFAULT_MAX_RANGES)


# --- placement ------------------------------------------------------------------


def test_elfcorehdr_is_placed_top_down_page_aligned_in_the_highest_crashkernel() -> None:
    low = (0x10000000, 0x17FFFFFF)
    high = (0x2F000000, 0x3EFFFFFF)
    t = _topology(crash=(high, low))
    cap = 5 * 1024  # not a page multiple: memsz rounds up to 2 pages
    image = CrashImage.for_topology(ARCH, t, cap)
    seg = image.elfcorehdr
    assert image.placed
    assert seg.kind is SegmentKind.ELFCOREHDR
    assert seg.memsz == 2 * PAGE_SIZE
    assert seg.mem == 0x3F000000 - 2 * PAGE_SIZE
    assert seg.mem % PAGE_SIZE == 0
    assert seg.range == MemRange(0x3EFFE000, 0x3EFFFFFF)
    assert seg.buf is image.header.buffer and len(seg.buf) == cap
    assert image.segments == (seg,)


def test_placement_rounds_down_when_the_reservation_end_is_not_page_aligned() -> None:
    t = _topology(crash=((0x2F000000, 0x3F0007FF),))
    image = CrashImage.for_topology(ARCH, t, 4096)
    assert image.elfcorehdr.mem == 0x3EFFF000


def test_no_crashkernel_builds_but_is_not_placed() -> None:
    image = CrashImage.for_topology(ARCH, _topology(crash=()), 16384)
    assert not image.placed
    assert image.elfcorehdr.mem == 0
    assert image.layout is not None and image.layout.loads == 2


def test_reservation_too_small_for_the_segment() -> None:
    t = _topology(crash=((0x2F000000, 0x2F000FFF),))
    with pytest.raises(CapacityError, match="Crash kernel 0x2f000000-0x2f000fff"):
        CrashImage.for_topology(ARCH, t, 8192)


# --- regeneration ---------------------------------------------------------------


def test_regenerate_rewrites_in_place_same_buffer_size_and_address() -> None:
    before = _topology(ncpus=1)
    image = CrashImage.for_topology(ARCH, before, ARCH.elfcorehdr_capacity(before))
    seg = image.elfcorehdr
    buf, mem, memsz = seg.buf, seg.mem, seg.memsz
    assert image.layout is not None and image.layout.cpus == (0,)

    after = _topology(ncpus=3, ram=((0x100000, 0x3FFDFFFF), (0x100000000, 0x17FFFFFFF)))
    layout = image.regenerate(after)
    assert image.layout is layout
    assert layout.cpus == (0, 1, 2)
    assert MemRange(0x100000000, 0x17FFFFFFF) in layout.ranges
    assert image.elfcorehdr is seg
    assert (seg.buf, seg.mem, seg.memsz) == (buf, mem, memsz)
    assert seg.buf is buf
    fresh = Elfcorehdr(len(buf), EM_X86_64)
    ARCH.build_elfcorehdr(after, fresh)
    assert bytes(seg.buf) == bytes(fresh.buffer)


def test_regenerate_refuses_when_the_reservation_moved_and_keeps_the_header() -> None:
    t = _topology()
    image = CrashImage.for_topology(ARCH, t, 16384)
    snapshot = bytes(image.elfcorehdr.buf)
    layout = image.layout
    with pytest.raises(UnsupportedError, match="reloaded"):
        image.regenerate(_topology(crash=((0x10000000, 0x17FFFFFF),), ncpus=2))
    assert bytes(image.elfcorehdr.buf) == snapshot
    assert image.layout is layout


def test_regenerate_overflow_keeps_the_previous_header_and_layout() -> None:
    t = _topology(ncpus=2)
    image = CrashImage.for_topology(ARCH, t, 1024)
    snapshot = bytes(image.elfcorehdr.buf)
    layout = image.layout
    with pytest.raises(CapacityError):
        image.regenerate(_topology(ncpus=30))
    assert bytes(image.elfcorehdr.buf) == snapshot
    assert image.layout is layout


@given(st.lists(topologies(), min_size=1, max_size=5))
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_regenerations_never_move_or_resize_the_segment(
    sequence: list[Topology],
) -> None:
    crash = (Resource(0x7F000000 * 4, 0x7F000000 * 4 + 0xFFFFFFF, "Crash kernel", 0),)
    first = dataclasses.replace(sequence[0], iomem=sequence[0].iomem + crash)
    image = CrashImage.for_topology(ARCH, first, 64 * 1024)
    seg = image.elfcorehdr
    ident = (id(seg.buf), seg.mem, seg.memsz, len(seg.buf))
    for topology in sequence[1:]:
        t = dataclasses.replace(topology, iomem=topology.iomem + crash)
        image.regenerate(t)
        assert image.elfcorehdr is seg
        assert (id(seg.buf), seg.mem, seg.memsz, len(seg.buf)) == ident
        fresh = Elfcorehdr(64 * 1024, EM_X86_64)
        ARCH.build_elfcorehdr(t, fresh)
        assert seg.buf == fresh.buffer


def test_core_and_arch_import_no_edge_libraries() -> None:
    """The pure core (and the arch back-ends) must not pull in I/O edges."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import kdumpd.core.elfcorehdr, kdumpd.core.ranges, kdumpd.core.image\n"
        "import kdumpd.arch, kdumpd.arch.x86_64\n"
        "bad = {'pyudev', 'dbus_fast', 'systemd', 'ctypes', 'asyncio', 'kdumpd.system',"
        " 'kdumpd.daemon', 'kdumpd.interfaces', 'kdumpd.events'}\n"
        "print(sorted(m for m in sys.modules if m in bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_kernel_advertised_size_leaves_room_for_the_ehdr() -> None:
    """x86 crash_elfcorehdr_size counts only phdrs ((2 + CPUs + ranges) * 56, §3.1).
    With 128 phdrs that is 7168 bytes, already 1 KiB aligned: the buffer must still
    hold the 64-byte Ehdr in front of a full set of phdrs."""
    import dataclasses
    from pathlib import Path

    from kdumpd.arch import get_arch
    from kdumpd.system.topologyreader import read_topology

    root = Path(__file__).resolve().parents[1] / "fixtures/guest-6.12-after"
    topo = read_topology(root)
    caps = dataclasses.replace(topo.capabilities, crash_elfcorehdr_size=128 * 56)
    topo = dataclasses.replace(topo, capabilities=caps)
    capacity = get_arch("x86_64").elfcorehdr_capacity(topo)
    assert capacity >= 64 + 128 * 56
    assert capacity % 1024 == 0
