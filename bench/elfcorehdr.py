#!/usr/bin/env python3
"""Benchmark: elfcorehdr rebuild (8,192 CPUs + 8,192 ranges) and /proc/iomem parse.

Run from the repository root: ``.venv/bin/python bench/elfcorehdr.py [--runs N]``
(or ``make bench``).  Prints one table; every number is the median of ``--runs``
timed runs after one warm-up, with a naive baseline measured in the same process.

Rows:
* ``write`` - :meth:`Elfcorehdr.write` of prepared notes/loads into the preallocated
  buffer (the in-place rebuild itself).  Target <= 5 ms.
* ``baseline write`` - one ``struct.pack`` per program header, ``b"".join`` and a
  copy into a buffer of the same size (what a straightforward writer does).
* ``build`` - :meth:`X86_64.build_elfcorehdr` from a Topology: present-CPU note
  selection, System RAM minus crashkernel, then ``write`` - what the daemon runs per
  burst.  Held to the same 5 ms.
* ``baseline build`` - Topology properties, a per-range subtraction loop, then the
  baseline writer.
* ``parse_iomem`` - :func:`kdumpd.core.iomem.parse_iomem` of a synthetic
  /proc/iomem with 8,192 System RAM ranges (16,386 lines).  Target <= 20 ms.
* ``baseline parse`` - a naive ``line.split`` parser producing the same Resources.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdumpd.arch.base import present_crash_notes
from kdumpd.arch.x86_64 import EM_X86_64, X86_64
from kdumpd.core.elfcorehdr import (
    Elfcorehdr,
    ElfLoads,
    ElfNotes,
    KernelTextLoad,
    elfcorehdr_capacity,
)
from kdumpd.core.iomem import parse_iomem, render_iomem
from kdumpd.core.ranges import crash_memory_ranges
from kdumpd.core.topology import (
    CrashNote,
    KernelText,
    MemRange,
    Resource,
    Topology,
    VmcoreInfo,
)

NCPUS = 8192
NRANGES = 8192
BLOCK = 128 << 20  # 128 MiB memory blocks, every other one present (sparse 2 TiB)


def synthetic_topology() -> Topology:
    iomem: list[Resource] = [Resource(0x0, 0xFFF, "Reserved", 0)]
    for i in range(NRANGES):
        start = 0x100000000 + 2 * i * BLOCK
        iomem.append(Resource(start, start + BLOCK - 1, "System RAM", 0))
        iomem.append(Resource(start + BLOCK, start + BLOCK + 0xFFF, "Reserved", 0))
    # Crash kernel nested inside the first RAM range (splits it), kernel code too.
    first = iomem[1]
    iomem.insert(2, Resource(first.start + 0x1000000, first.start + 0x1FFFFFF, "Kernel code", 1))
    iomem.insert(3, Resource(first.start + 0x4000000, first.start + 0x7FFFFFF, "Crash kernel", 1))
    return x86_topology(iomem, NCPUS)


def x86_topology(iomem: list[Resource], ncpus: int) -> Topology:
    """A synthetic x86_64 snapshot: ``ncpus`` CPUs with crash notes, ``iomem``, and
    the kernel facts of a Debian guest (vmcoreinfo, kernel text, PAGE_OFFSET)."""
    cpus = tuple(range(ncpus))
    return Topology(
        arch="x86_64",
        possible_cpus=cpus,
        present_cpus=cpus,
        online_cpus=cpus,
        crash_notes=tuple(CrashNote(c, 0x7F000000 + c * 0x400, 0x1A8) for c in cpus),
        iomem=tuple(iomem),
        vmcoreinfo=VmcoreInfo(0x2A00000, 0x1000),
        kernel_text=KernelText(0xFFFFFFFF81000000, 0x2200000, "kcore"),
        page_offset=0xFFFF888000000000,
    )


_PHDR = struct.Struct("<IIQQQQQQ")
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")


def baseline_write(buffer: bytearray, notes: ElfNotes, loads: ElfLoads) -> int:
    """A straightforward writer: struct.pack per phdr, join, copy, zero the tail."""
    parts: list[bytes] = []
    for n in notes.cpus:
        parts.append(_PHDR.pack(4, 0, n.address, 0, n.address, n.size, n.size, 0))
    if notes.vmcoreinfo is not None:
        v = notes.vmcoreinfo
        parts.append(_PHDR.pack(4, 0, v.address, 0, v.address, v.size, v.size, 0))
    if loads.kernel_text is not None:
        t = loads.kernel_text
        parts.append(_PHDR.pack(1, 7, t.paddr, t.vaddr, t.paddr, t.size, t.size, 0))
    po = loads.page_offset
    for r in loads.ram:
        size = r.end - r.start + 1
        parts.append(
            _PHDR.pack(1, 7, r.start, (po + r.start) & ((1 << 64) - 1), r.start, size, size, 0)
        )
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    ehdr = _EHDR.pack(ident, 4, EM_X86_64, 1, 0, 64, 0, 0, 64, 56, len(parts), 0, 0, 0)
    data = ehdr + b"".join(parts)
    buffer[: len(data)] = data
    buffer[len(data) :] = bytes(len(buffer) - len(data))
    return len(data)


def baseline_build(buffer: bytearray, topology: Topology) -> int:
    """A straightforward pipeline: Topology properties, per-range subtraction loop,
    sorted present notes, then :func:`baseline_write`."""
    ram = list(topology.system_ram)
    for c in topology.crashkernel:
        cut: list[MemRange] = []
        for r in ram:
            if r.end < c.start or r.start > c.end:
                cut.append(r)
                continue
            if r.start < c.start:
                cut.append(MemRange(r.start, c.start - 1))
            if r.end > c.end:
                cut.append(MemRange(c.end + 1, r.end))
        ram = cut
    present = set(topology.present_cpus)
    notes = sorted((n for n in topology.crash_notes if n.cpu in present), key=lambda n: n.cpu)
    code = topology.kernel_code
    text = None
    if code is not None and topology.kernel_text is not None:
        kt = topology.kernel_text
        text = KernelTextLoad(code.start, kt.vaddr, kt.size)
    po = topology.page_offset if topology.page_offset is not None else 0xFFFF888000000000
    return baseline_write(buffer, ElfNotes(notes, topology.vmcoreinfo), ElfLoads(ram, po, text))


def baseline_parse(text: str) -> tuple[Resource, ...]:
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        stripped = line.lstrip(" ")
        depth = (len(line) - len(stripped)) // 2
        rng, _, name = stripped.partition(" : ")
        start, _, end = rng.partition("-")
        out.append(Resource(int(start, 16), int(end, 16), name, depth))
    return tuple(out)


def median_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e6, min(times) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=31, help="timed runs per row (default 31)")
    args = ap.parse_args()

    topology = synthetic_topology()
    arch = X86_64()
    capacity = elfcorehdr_capacity(NCPUS, NRANGES)
    hdr = Elfcorehdr(capacity, EM_X86_64)
    code = topology.kernel_code
    assert code is not None and topology.kernel_text is not None
    notes = ElfNotes(present_crash_notes(topology), topology.vmcoreinfo)
    loads = ElfLoads(
        crash_memory_ranges(topology),
        0xFFFF888000000000,
        KernelTextLoad(code.start, topology.kernel_text.vaddr, topology.kernel_text.size),
    )
    layout = hdr.write(notes, loads)
    baseline_buf = bytearray(capacity)
    assert baseline_write(baseline_buf, notes, loads) == layout.used
    assert baseline_buf == hdr.buffer, "baseline and writer disagree"
    buf_id = id(hdr.buffer)

    text = render_iomem(topology.iomem)
    assert parse_iomem(text) == baseline_parse(text) == topology.iomem

    baseline_build(baseline_buf, topology)
    assert baseline_buf == hdr.buffer, "baseline build and build disagree"

    rows: list[tuple[str, float, float, str, float | None]] = []
    w_med, w_min = median_ms(lambda: hdr.write(notes, loads), args.runs)
    bw_med, bw_min = median_ms(lambda: baseline_write(baseline_buf, notes, loads), args.runs)
    b_med, b_min = median_ms(lambda: arch.build_elfcorehdr(topology, hdr), args.runs)
    bb_med, bb_min = median_ms(lambda: baseline_build(baseline_buf, topology), args.runs)
    assert id(hdr.buffer) == buf_id and len(hdr.buffer) == capacity
    p_med, p_min = median_ms(lambda: parse_iomem(text), args.runs)
    bp_med, bp_min = median_ms(lambda: baseline_parse(text), args.runs)
    rows.append(("elfcorehdr write (in place)", w_med, w_min, "<= 5 ms", bw_med / w_med))
    rows.append(("  baseline write (struct.pack/phdr)", bw_med, bw_min, "-", None))
    rows.append(("elfcorehdr build from Topology", b_med, b_min, "<= 5 ms", bb_med / b_med))
    rows.append(("  baseline build (naive pipeline)", bb_med, bb_min, "-", None))
    rows.append(("parse_iomem", p_med, p_min, "<= 20 ms", bp_med / p_med))
    rows.append(("  baseline parse (line.split)", bp_med, bp_min, "-", None))

    nlines = text.count("\n")
    print(
        f"elfcorehdr: {layout.notes} notes + {layout.loads} loads, "
        f"{layout.used}/{layout.capacity} bytes; iomem: {nlines} lines; "
        f"median of {args.runs} runs, Python {sys.version.split()[0]}"
    )
    print(f"| {'case':<36} | {'median ms':>9} | {'min ms':>7} | {'target':>8} | {'speedup':>7} |")
    print(f"|{'-' * 38}|{'-' * 11}|{'-' * 9}|{'-' * 10}|{'-' * 9}|")
    for name, med, mn, target, ratio in rows:
        r = f"{ratio:.1f}x" if ratio is not None else ""
        print(f"| {name:<36} | {med:9.2f} | {mn:7.2f} | {target:>8} | {r:>7} |")
    ok = w_med <= 5.0 and b_med <= 5.0 and p_med <= 20.0
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
