"""Hypothesis strategies and checkers shared by the elfcorehdr/ranges/image tests.

Everything here is computed independently of the code under test: topologies are
random, expected headers are derived from the spec (docs/kernel-interfaces.md §5) with
plain ``struct`` packing, and ``readelf`` output is parsed from text.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from kdumpd.core.topology import (
    CrashNote,
    KernelCapabilities,
    KernelText,
    Resource,
    Topology,
    VmcoreInfo,
)

PAGE = 0x1000
PF_RWX = 0x7
X86_64_PAGE_OFFSET = 0xFFFF888000000000


def small_topology(*crash_notes: CrashNote) -> Topology:
    """The golden topology: CPUs 0-2 of 4 present, low and high RAM, a crash kernel;
    by default one crash note per present CPU."""
    return Topology(
        arch="x86_64",
        possible_cpus=(0, 1, 2, 3),
        present_cpus=(0, 1, 2),
        online_cpus=(0, 1, 2),
        crash_notes=crash_notes
        or (
            CrashNote(0, 0x7FC1D000, 0x1A8),
            CrashNote(1, 0x7FC3D000, 0x1A8),
            CrashNote(2, 0x7FC5D000, 0x1A8),
        ),
        iomem=(
            Resource(0x0, 0xFFF, "Reserved", 0),
            Resource(0x1000, 0x9FBFF, "System RAM", 0),
            Resource(0x100000, 0xBFFDFFFF, "System RAM", 0),
            Resource(0x2000000, 0x2E01FFF, "Kernel code", 1),
            Resource(0xB3000000, 0xBEFFFFFF, "Crash kernel", 1),
            Resource(0x100000000, 0x13FFFFFFF, "System RAM", 0),
        ),
        vmcoreinfo=VmcoreInfo(0x3F2C000, 0x1000),
        kernel_text=KernelText(0xFFFFFFFF81000000, 0x2200000, "kcore"),
        page_offset=X86_64_PAGE_OFFSET,
    )


@st.composite
def ram_layouts(draw: st.DrawFn, max_ranges: int = 12) -> list[tuple[int, int]]:
    """Ascending, disjoint, page-granular (start, end) RAM ranges; gaps may be zero."""
    n = draw(st.integers(min_value=0, max_value=max_ranges))
    pos = draw(st.sampled_from([0, PAGE, 0x100000]))
    out = []
    for _ in range(n):
        pos += draw(st.integers(min_value=0, max_value=64)) * PAGE
        length = draw(st.integers(min_value=1, max_value=0x4000)) * PAGE
        out.append((pos, pos + length - 1))
        pos += length
    return out


@st.composite
def topologies(
    draw: st.DrawFn,
    *,
    max_cpus: int = 24,
    max_ranges: int = 12,
    high_addresses: bool = False,
) -> Topology:
    """A random but self-consistent x86_64 topology."""
    ncpu = draw(st.integers(min_value=1, max_value=max_cpus))
    possible = tuple(range(ncpu))
    present = tuple(sorted(draw(st.sets(st.sampled_from(possible), min_size=0))))
    with_notes = sorted(draw(st.sets(st.sampled_from(possible))) | set(present[:1]))
    # Above vmcoreinfo (0x2A00000..0x2B00000), so the notes never overlap each other.
    note_base = draw(st.integers(min_value=0x3000, max_value=0xFFFF)) * PAGE
    note_size = draw(st.sampled_from([0x150, 0x1A8, 0x400, 1024]))
    notes = tuple(CrashNote(c, note_base + c * 0x400, note_size) for c in with_notes)

    ram: list[tuple[int, int]] = draw(ram_layouts(max_ranges=max_ranges))
    if high_addresses and ram:
        shift = draw(st.integers(min_value=0, max_value=(1 << 52) // PAGE)) * PAGE
        ram = [(s + shift, e + shift) for s, e in ram]
    names = st.sampled_from(["System RAM", "System RAM (kmem)", "System RAM (virtio_mem)"])
    iomem: list[Resource] = []
    top = ram[-1][1] if ram else 0x100000
    crash: list[tuple[int, int]] = []
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        start = draw(st.integers(min_value=0, max_value=top // PAGE)) * PAGE
        length = draw(st.integers(min_value=1, max_value=0x2000)) * PAGE
        crash.append((start, start + length - 1))
    for s, e in ram:
        iomem.append(Resource(s, e, draw(names), 0))
    # Children (crash kernel, kernel code) follow as depth-1 lines; the writer does not
    # care about file order, only names.
    for s, e in crash:
        iomem.append(Resource(s, e, "Crash kernel", 1))
    kernel_text = None
    with_text = draw(st.booleans())
    if ram and with_text:
        s, e = ram[0]
        iomem.append(Resource(s, min(e, s + 0xFFFFF), "Kernel code", 1))
        kernel_text = KernelText(0xFFFFFFFF81000000, 0x2000000, "kcore")
    if draw(st.booleans()):
        iomem.append(Resource(0xFED00000, 0xFED003FF, "HPET 0", 0))
    vmcoreinfo = VmcoreInfo(0x2A00000 + draw(st.integers(0, 255)) * PAGE, 0x1000)
    return Topology(
        arch="x86_64",
        possible_cpus=possible,
        present_cpus=present,
        online_cpus=present,
        crash_notes=notes,
        iomem=tuple(iomem),
        vmcoreinfo=vmcoreinfo if draw(st.booleans()) else None,
        kernel_text=kernel_text,
        page_offset=draw(st.sampled_from([None, X86_64_PAGE_OFFSET, 0xFF11000000000000])),
        capabilities=KernelCapabilities(),
    )


@dataclass(frozen=True)
class Phdr:
    p_type: int
    p_flags: int
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_align: int


def expected_phdrs(topology: Topology, ranges: tuple[tuple[int, int], ...]) -> list[Phdr]:
    """The program headers the spec prescribes (§1.4 order and field table).

    ``ranges`` is the expected crash memory (tested separately against brute force).
    """
    present = set(topology.present_cpus)
    out = [
        Phdr(4, 0, n.address, 0, n.address, n.size, n.size, 0)
        for n in sorted(topology.crash_notes, key=lambda n: n.cpu)
        if n.cpu in present
    ]
    if topology.vmcoreinfo is not None:
        v = topology.vmcoreinfo
        out.append(Phdr(4, 0, v.address, 0, v.address, v.size, v.size, 0))
    code = next((r for r in topology.iomem if r.name == "Kernel code"), None)
    if code is not None and topology.kernel_text is not None:
        kt = topology.kernel_text
        out.append(Phdr(1, PF_RWX, code.start, kt.vaddr, code.start, kt.size, kt.size, 0))
    po = X86_64_PAGE_OFFSET if topology.page_offset is None else topology.page_offset
    for s, e in ranges:
        size = e - s + 1
        out.append(Phdr(1, PF_RWX, s, (po + s) % (1 << 64), s, size, size, 0))
    return out


def spec_header_bytes(machine: int, phdrs: list[Phdr], capacity: int) -> bytes:
    """The full buffer per §1.3: Ehdr field by field, phdrs, zero tail."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = (
        ident
        + struct.pack("<H", 4)  # e_type ET_CORE
        + struct.pack("<H", machine)
        + struct.pack("<I", 1)  # e_version
        + struct.pack("<Q", 0)  # e_entry
        + struct.pack("<Q", 64 if phdrs else 0)  # e_phoff (ELF: 0 without phdrs)
        + struct.pack("<Q", 0)  # e_shoff
        + struct.pack("<I", 0)  # e_flags
        + struct.pack("<H", 64)  # e_ehsize
        + struct.pack("<H", 56)  # e_phentsize
        + struct.pack("<H", len(phdrs))
        + struct.pack("<HHH", 0, 0, 0)
    )
    body = b"".join(
        struct.pack("<IIQQQQQQ", p.p_type, p.p_flags, p.p_offset, p.p_vaddr, p.p_paddr,
                    p.p_filesz, p.p_memsz, p.p_align)
        for p in phdrs
    )  # fmt: skip
    data = ehdr + body
    return data + bytes(capacity - len(data))


def elf_note(name: bytes, ntype: int, size: int) -> bytes:
    """A well-formed ELF note of exactly ``size`` bytes (zero descriptor)."""
    namez = name + b"\0"
    head = struct.pack("<III", len(namez), 0, ntype) + namez + bytes((-len(namez)) % 4)
    desc = size - len(head)
    assert desc >= 0 and desc % 4 == 0, (name, size)
    return struct.pack("<III", len(namez), desc, ntype) + head[12:] + bytes(desc)


def write_sparse_core(path: Path, header: bytes, topology: Topology) -> None:
    """The header plus a note at each advertised physical offset, as /proc/vmcore
    would present the first kernel's memory."""
    present = set(topology.present_cpus)
    with path.open("wb") as f:
        f.write(header)
        for n in topology.crash_notes:
            if n.cpu in present:
                f.seek(n.address)
                f.write(elf_note(b"CORE", 1, n.size))
        if topology.vmcoreinfo is not None:
            f.seek(topology.vmcoreinfo.address)
            f.write(elf_note(b"VMCOREINFO", 0, topology.vmcoreinfo.size))


def readelf_path() -> str | None:
    return shutil.which("readelf")


_PHDR_LINE = re.compile(
    r"^\s+(NOTE|LOAD)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+"
    r"(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+([RWE ]{3})\s+(0x[0-9a-f]+|0)$"
)
_PAST_EOF = re.compile(r"^readelf: Error: Reading (\d+) bytes extends past end of file for notes$")


@dataclass(frozen=True)
class ReadelfResult:
    header: dict[str, str]
    phdrs: list[Phdr]
    past_eof_note_sizes: list[int]
    stdout: str
    stderr: str


def run_readelf(path: Path) -> ReadelfResult:
    """``readelf -h -l -n -W``; parse the ELF header and program headers from text."""
    exe = readelf_path()
    assert exe is not None
    proc = subprocess.run(
        [exe, "-h", "-l", "-n", "-W", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
    )
    header: dict[str, str] = {}
    phdrs: list[Phdr] = []
    section = ""
    for line in proc.stdout.splitlines():
        if line.startswith("ELF Header:"):
            section = "h"
            continue
        if line.startswith("Program Headers:"):
            section = "l"
            continue
        if section == "h" and ":" in line:
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
        elif section == "l":
            m = _PHDR_LINE.match(line)
            if m:
                flags = m.group(7)
                pflags = (4 if flags[0] == "R" else 0) | (2 if flags[1] == "W" else 0)
                pflags |= 1 if flags[2] == "E" else 0
                phdrs.append(
                    Phdr(
                        {"NOTE": 4, "LOAD": 1}[m.group(1)],
                        pflags,
                        int(m.group(2), 16),
                        int(m.group(3), 16),
                        int(m.group(4), 16),
                        int(m.group(5), 16),
                        int(m.group(6), 16),
                        int(m.group(8), 16),
                    )
                )
    past_eof: list[int] = []
    other_errors: list[str] = []
    for line in proc.stderr.splitlines():
        m = _PAST_EOF.match(line)
        if m:
            past_eof.append(int(m.group(1)))
        elif line.strip():
            other_errors.append(line)
    assert not other_errors, f"readelf complained: {other_errors}"
    assert proc.returncode in (0, 1), proc.returncode
    return ReadelfResult(header, phdrs, past_eof, proc.stdout, proc.stderr)
