from __future__ import annotations

import io
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdumpd.arch.x86_64 import X86_64
from kdumpd.arch.x86_64 import x86_crash_ranges as crash_memory_ranges
from kdumpd.core.elfcorehdr import (
    Elfcorehdr,
    ElfLoads,
    ElfNotes,
    KernelTextLoad,
    elfcorehdr_capacity,
)
from kdumpd.core.errors import CapacityError, InputError, UnsupportedError
from kdumpd.core.topology import (
    CrashNote,
    MemRange,
    Resource,
    Topology,
    VmcoreInfo,
)

from .elfcorehdr_support import (
    Phdr,
    ReadelfResult,
    expected_phdrs,
    readelf_path,
    run_readelf,
    small_topology,
    spec_header_bytes,
    topologies,
    write_sparse_core,
)

EM_X86_64 = 62
ARCH = X86_64()
BIG = 64 * 1024  # room for every random topology below


def _build(topology: Topology, capacity: int = BIG) -> Elfcorehdr:
    hdr = Elfcorehdr(capacity, EM_X86_64)
    ARCH.build_elfcorehdr(topology, hdr)
    return hdr


def _small_topology() -> Topology:
    return small_topology(
        CrashNote(0, 0x7FC1D000, 0x1A8),
        CrashNote(1, 0x7FC3D000, 0x1A8),
        CrashNote(3, 0x7FC7D000, 0x1A8),  # not present: skipped
    )


# --- golden ------------------------------------------------------------------


def test_golden_bytes_for_a_small_topology_hand_computed_from_the_spec() -> None:
    cap = elfcorehdr_capacity(4, 4)
    hdr = _build(_small_topology(), cap)
    po = 0xFFFF888000000000
    phdrs = [
        Phdr(4, 0, 0x7FC1D000, 0, 0x7FC1D000, 0x1A8, 0x1A8, 0),
        Phdr(4, 0, 0x7FC3D000, 0, 0x7FC3D000, 0x1A8, 0x1A8, 0),
        Phdr(4, 0, 0x3F2C000, 0, 0x3F2C000, 0x1000, 0x1000, 0),
        Phdr(1, 7, 0x2000000, 0xFFFFFFFF81000000, 0x2000000, 0x2200000, 0x2200000, 0),
        # no PT_LOAD for [0x1000, 0x9fc00): x86 reserves the first MiB at boot
        Phdr(1, 7, 0x100000, po + 0x100000, 0x100000, 0xB2F00000, 0xB2F00000, 0),
        Phdr(1, 7, 0xBF000000, po + 0xBF000000, 0xBF000000, 0xFE0000, 0xFE0000, 0),
        Phdr(1, 7, 0x100000000, po + 0x100000000, 0x100000000, 0x40000000, 0x40000000, 0),
    ]
    assert bytes(hdr.buffer) == spec_header_bytes(EM_X86_64, phdrs, cap)
    # 64 + 7 * 56 = 456 bytes used; capacity 64 + (4 + 2 + 4) * 56 = 624 -> 1024.
    assert cap == 1024
    layout = hdr.layout
    assert layout is not None
    assert (layout.notes, layout.loads, layout.used, layout.capacity) == (3, 4, 456, 1024)
    assert layout.cpus == (0, 1)
    assert layout.vmcoreinfo and layout.kernel_text


def test_capacity_arithmetic() -> None:
    # 64 + (8192 + 2 + 8192) * 56 = 917,680 -> rounded up to 1024: 918,528.
    assert elfcorehdr_capacity(8192, 8192) == 918_528
    assert elfcorehdr_capacity(0, 0) == 1024  # 64 + 2 * 56 = 176
    assert elfcorehdr_capacity(15, 0) == 1024  # 64 + 17 * 56 = 1016
    assert elfcorehdr_capacity(16, 0) == 2048  # 64 + 18 * 56 = 1072
    with pytest.raises(ValueError):
        elfcorehdr_capacity(-1, 0)


@given(st.integers(0, 100_000), st.integers(0, 100_000))
def test_capacity_is_the_smallest_1024_multiple_that_fits(cpus: int, ranges: int) -> None:
    cap = elfcorehdr_capacity(cpus, ranges)
    need = 64 + (cpus + 2 + ranges) * 56
    assert cap % 1024 == 0
    assert need <= cap < need + 1024


# --- properties --------------------------------------------------------------


@given(topologies(high_addresses=True))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_header_parses_with_pyelftools_and_matches_the_input(topology: Topology) -> None:
    hdr = _build(topology)
    ranges = tuple((r.start, r.end) for r in crash_memory_ranges(topology))
    want = expected_phdrs(topology, ranges)

    elf = ELFFile(io.BytesIO(bytes(hdr.buffer)))
    assert elf.elfclass == 64 and elf.little_endian
    assert elf["e_type"] == "ET_CORE"
    assert elf["e_machine"] == "EM_X86_64"
    assert elf["e_phoff"] == (64 if want else 0) and elf["e_phentsize"] == 56
    assert elf["e_shoff"] == 0 and elf["e_shnum"] == 0
    assert elf.num_segments() == len(want)
    got = []
    for i in range(elf.num_segments()):
        h = elf.get_segment(i).header
        got.append(
            Phdr(
                {"PT_NOTE": 4, "PT_LOAD": 1}[h["p_type"]],
                h["p_flags"],
                h["p_offset"],
                h["p_vaddr"],
                h["p_paddr"],
                h["p_filesz"],
                h["p_memsz"],
                h["p_align"],
            )
        )
    assert got == want

    # Notes: one per present CPU with crash_notes, then vmcoreinfo.
    present = set(topology.present_cpus)
    layout = hdr.layout
    assert layout is not None
    assert layout.cpus == tuple(n.cpu for n in topology.crash_notes if n.cpu in present)
    # No RAM load touches a crashkernel range; every load is inside System RAM.
    ram_loads = [p for p in got if p.p_type == 1 and p.p_vaddr != 0xFFFFFFFF81000000]
    for p in ram_loads[-len(ranges) :] if ranges else []:
        r = MemRange(p.p_paddr, p.p_paddr + p.p_memsz - 1)
        assert not any(r.overlaps(c) for c in topology.crashkernel)
        assert any(s.start <= r.start and r.end <= s.end for s in topology.system_ram)
    # The tail after the last phdr is zero.
    assert not any(hdr.buffer[layout.used :])


@given(st.lists(topologies(), min_size=2, max_size=6))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_rebuilds_reuse_the_same_buffer_and_equal_a_fresh_build(
    sequence: list[Topology],
) -> None:
    hdr = Elfcorehdr(BIG, EM_X86_64)
    buf = hdr.buffer
    for topology in sequence:
        layout = ARCH.build_elfcorehdr(topology, hdr)
        assert hdr.buffer is buf and len(buf) == BIG
        # In place after any predecessor == fresh into a zeroed buffer (no stale bytes).
        assert bytes(buf) == bytes(_build(topology).buffer)
        assert layout.capacity == BIG


@given(topologies(max_cpus=40, max_ranges=30), topologies(max_cpus=4, max_ranges=3))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_overflow_raises_and_leaves_the_previous_header_intact(
    big: Topology, small: Topology
) -> None:
    hdr = Elfcorehdr(1024, EM_X86_64)  # room for 17 phdrs
    try:
        ARCH.build_elfcorehdr(small, hdr)
    except CapacityError:
        return  # even the small one did not fit: nothing to compare against
    before = bytes(hdr.buffer)
    layout_before = hdr.layout
    ranges = crash_memory_ranges(big)
    present = set(big.present_cpus)
    phnum = (
        sum(1 for n in big.crash_notes if n.cpu in present)
        + (big.vmcoreinfo is not None)
        + (big.kernel_text is not None and big.kernel_code is not None)
        + len(ranges)
    )
    if 64 + phnum * 56 <= 1024:
        ARCH.build_elfcorehdr(big, hdr)
        return
    with pytest.raises(CapacityError) as exc:
        ARCH.build_elfcorehdr(big, hdr)
    assert exc.value.needed == 64 + phnum * 56
    assert exc.value.capacity == 1024
    assert "elfcorehdr" in str(exc.value)
    assert bytes(hdr.buffer) == before
    assert hdr.layout is layout_before


def test_overflow_of_a_fresh_buffer_leaves_it_zero() -> None:
    hdr = Elfcorehdr(1024, EM_X86_64)
    notes = [CrashNote(i, 0x1000 * (i + 1), 0x150) for i in range(20)]
    with pytest.raises(CapacityError):
        hdr.write(ElfNotes(notes), ElfLoads((), 0))
    assert bytes(hdr.buffer) == bytes(1024)
    assert hdr.layout is None


# --- input validation ---------------------------------------------------------


def test_unsorted_cpus_and_overlapping_ranges_are_input_errors() -> None:
    hdr = Elfcorehdr(4096, EM_X86_64)
    with pytest.raises(InputError, match="more than one crash note"):
        hdr.write(ElfNotes([CrashNote(1, 0x2000, 8), CrashNote(1, 0x1000, 8)]), ElfLoads((), 0))
    with pytest.raises(InputError, match="disjoint"):
        hdr.write(ElfNotes([]), ElfLoads((MemRange(0, 0x1FFF), MemRange(0x1000, 0x2FFF)), 0))
    assert bytes(hdr.buffer) == bytes(4096)


def test_cpu_notes_are_written_in_ascending_cpu_order_whatever_the_input_order() -> None:
    a = Elfcorehdr(1024, EM_X86_64)
    b = Elfcorehdr(1024, EM_X86_64)
    notes = [CrashNote(2, 0x3000, 8), CrashNote(0, 0x1000, 8), CrashNote(1, 0x2000, 8)]
    layout = a.write(ElfNotes(notes), ElfLoads((), 0))
    b.write(ElfNotes(sorted(notes, key=lambda n: n.cpu)), ElfLoads((), 0))
    assert layout.cpus == (0, 1, 2)
    assert a.buffer == b.buffer
    offsets = [s["p_offset"] for s in ELFFile(io.BytesIO(bytes(a.buffer))).iter_segments()]
    assert offsets == [0x1000, 0x2000, 0x3000]


def test_values_beyond_64_bits_are_input_errors_and_change_nothing() -> None:
    hdr = Elfcorehdr(4096, EM_X86_64)
    hdr.write(ElfNotes([CrashNote(0, 0x1000, 8)]), ElfLoads((), 0))
    before = bytes(hdr.buffer)
    with pytest.raises(InputError, match="64"):
        hdr.write(ElfNotes([CrashNote(0, 1 << 64, 8)]), ElfLoads((), 0))
    with pytest.raises(InputError, match="64"):
        hdr.write(ElfNotes([]), ElfLoads((), 0, KernelTextLoad(-1, 0, 0)))
    assert bytes(hdr.buffer) == before


def test_page_offset_addition_wraps_like_c() -> None:
    hdr = Elfcorehdr(4096, EM_X86_64)
    hdr.write(ElfNotes([]), ElfLoads((MemRange(0x2000, 0x2FFF),), (1 << 64) - 0x1000))
    seg = ELFFile(io.BytesIO(bytes(hdr.buffer))).get_segment(0)
    assert seg["p_vaddr"] == 0x1000


def test_too_many_phdrs_need_extended_numbering_and_are_refused() -> None:
    n = 0xFFFF
    hdr = Elfcorehdr(elfcorehdr_capacity(n, 0), EM_X86_64)
    notes = [CrashNote(i, 0x1000 + i * 0x400, 8) for i in range(n)]
    with pytest.raises(UnsupportedError, match="extended numbering"):
        hdr.write(ElfNotes(notes), ElfLoads((), 0))


def test_constructor_validates_and_buffer_cannot_be_resized() -> None:
    with pytest.raises(ValueError):
        Elfcorehdr(10, EM_X86_64)
    with pytest.raises(ValueError):
        Elfcorehdr(1028 + 1, EM_X86_64)
    with pytest.raises(ValueError):
        Elfcorehdr(1024, 0x10000)
    hdr = Elfcorehdr(1024, EM_X86_64)
    assert hdr.capacity == 1024 and hdr.machine == EM_X86_64
    with pytest.raises(BufferError):
        hdr.buffer.extend(b"x")
    with pytest.raises(AttributeError):
        hdr.buffer = bytearray(1024)  # type: ignore[misc]


def test_empty_header_is_still_valid_elf() -> None:
    hdr = Elfcorehdr(1024, EM_X86_64)
    layout = hdr.write(ElfNotes([]), ElfLoads((), 0))
    assert (layout.notes, layout.loads, layout.used) == (0, 0, 64)
    elf = ELFFile(io.BytesIO(bytes(hdr.buffer)))
    assert elf.num_segments() == 0 and elf["e_type"] == "ET_CORE"


# --- binutils readelf --------------------------------------------------------


def _require_readelf() -> None:
    if readelf_path() is None:
        pytest.skip("binutils readelf not installed (apt-get install binutils)")


def _check_with_readelf(topology: Topology, hdr: Elfcorehdr, path: Path) -> None:
    # Only the header on disk: readelf -n walks every PT_NOTE and reports each one as
    # reaching past EOF (the notes live in the first kernel's memory).
    path.write_bytes(bytes(hdr.buffer))
    _compare_readelf(topology, hdr, run_readelf(path), notes_on_disk=False)
    # Header + real notes at their physical offsets (a sparse /proc/vmcore look-alike):
    # readelf -n must find every note through our PT_NOTE headers.
    write_sparse_core(path, bytes(hdr.buffer), topology)
    _compare_readelf(topology, hdr, run_readelf(path), notes_on_disk=True)


def _compare_readelf(
    topology: Topology, hdr: Elfcorehdr, res: ReadelfResult, *, notes_on_disk: bool
) -> None:
    ranges = tuple((r.start, r.end) for r in crash_memory_ranges(topology))
    want = expected_phdrs(topology, ranges)
    h = res.header
    assert h["Magic"].split() == ["7f", "45", "4c", "46", "02", "01", "01"] + ["00"] * 9
    assert h["Class"] == "ELF64"
    assert h["Data"] == "2's complement, little endian"
    assert h["Type"].startswith("CORE")
    assert h["Machine"] == "Advanced Micro Devices X86-64"
    assert h["Version"] == "0x1"
    assert h["Entry point address"] == "0x0"
    assert h["Start of program headers"].startswith("64 " if want else "0 ")
    assert h["Start of section headers"].startswith("0 ")
    assert h["Flags"] == "0x0"
    assert h["Size of this header"] == "64 (bytes)"
    assert h["Size of program headers"] == "56 (bytes)"
    assert h["Number of program headers"] == str(len(want))
    assert h["Number of section headers"] == "0"
    assert res.phdrs == want
    cpu_notes = [p for p in want[: len(hdr.layout.cpus if hdr.layout else ())]]
    if notes_on_disk:
        assert res.past_eof_note_sizes == []
        assert res.stdout.count("NT_PRSTATUS (prstatus structure)") == len(cpu_notes)
        assert res.stdout.count("VMCOREINFO") == (topology.vmcoreinfo is not None)
    else:
        assert res.past_eof_note_sizes == [p.p_filesz for p in want if p.p_type == 4]


def test_readelf_parses_the_golden_header(tmp_path: Path) -> None:
    _require_readelf()
    topology = _small_topology()
    _check_with_readelf(topology, _build(topology), tmp_path / "elfcorehdr")


@given(topologies(high_addresses=True))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_readelf_parses_every_random_header(topology: Topology) -> None:
    _require_readelf()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        _check_with_readelf(topology, _build(topology), Path(d) / "elfcorehdr")


def test_full_size_header_8192_cpus_8192_ranges_matches_the_spec_and_readelf(
    tmp_path: Path,
) -> None:
    n = 8192
    cpus = tuple(range(n))
    iomem = tuple(
        Resource(
            0x100000000 + i * 0x10000000, 0x100000000 + i * 0x10000000 + 0x7FFFFFF, "System RAM"
        )
        for i in range(n)
    )
    topology = Topology(
        arch="x86_64",
        possible_cpus=cpus,
        present_cpus=cpus,
        online_cpus=cpus,
        crash_notes=tuple(CrashNote(c, 0x7F000000 + c * 0x400, 0x1A8) for c in cpus),
        iomem=iomem,
        vmcoreinfo=VmcoreInfo(0x2A00000, 0x1024),
    )
    cap = elfcorehdr_capacity(n, n)
    hdr = _build(topology, cap)
    ranges = tuple((r.start, r.end) for r in topology.system_ram)
    assert bytes(hdr.buffer) == spec_header_bytes(EM_X86_64, expected_phdrs(topology, ranges), cap)
    assert hdr.layout is not None and hdr.layout.used == 64 + (2 * n + 1) * 56
    if readelf_path() is None:
        pytest.skip("binutils readelf not installed (apt-get install binutils)")
    path = tmp_path / "big"
    path.write_bytes(bytes(hdr.buffer))
    res = run_readelf(path)
    assert res.header["Number of program headers"] == str(2 * n + 1)
    assert len(res.phdrs) == 2 * n + 1
    assert res.phdrs == expected_phdrs(topology, ranges)
