"""Parse what the capture kernel's /init printed about /proc/vmcore."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

NT_PRSTATUS = 1
PRSTATUS_PID_OFFSET = 32  # x86_64 struct elf_prstatus: 3 ints, short+pad, 2 longs
PRSTATUS_REG_OFFSET = 112
PRSTATUS_REG_BYTES = 27 * 8


@dataclass
class Prstatus:
    index: int  # note order in /proc/vmcore (= PT_NOTE order of the elfcorehdr)
    pid: int
    has_regs: bool


@dataclass
class VmcoreReport:
    size: int = 0
    loads: list[tuple[int, int]] = field(default_factory=list)  # physical, end inclusive
    prstatus: list[Prstatus] = field(default_factory=list)
    other_notes: list[str] = field(default_factory=list)
    dt_cpus: list[str] = field(default_factory=list)  # ppc64le: "dtcpu NAME reg=.. ..." lines

    @property
    def prstatus_count(self) -> int:
        return len(self.prstatus)


def parse(body: str) -> VmcoreReport:
    rep = VmcoreReport()
    notes_off = notes_size = 0
    hexdata = ""
    for raw in body.splitlines():
        line = raw.strip()
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "size" and len(parts) == 2:
            rep.size = int(parts[1])
        elif parts[0] == "LOAD" and len(parts) >= 6:
            paddr = int(parts[3], 16)
            memsz = int(parts[5], 16)
            if memsz:
                rep.loads.append((paddr, paddr + memsz - 1))
        elif parts[0] == "notes" and len(parts) == 3:
            notes_off, notes_size = int(parts[1]), int(parts[2])
        elif parts[0] == "noteshex" and len(parts) == 2:
            hexdata = parts[1]
        elif parts[0] == "headhex" and len(parts) == 2:
            _parse_head(bytes.fromhex(parts[1]), rep)
        elif parts[0] == "dtcpu":
            rep.dt_cpus.append(line.removeprefix("dtcpu ").strip())
    if hexdata:
        data = bytes.fromhex(hexdata)
        start = notes_off % 4096
        _parse_notes(data[start : start + notes_size], rep)
    return rep


def _parse_head(head: bytes, rep: VmcoreReport) -> None:
    """The first bytes of /proc/vmcore (ppc64le guests print them instead of running
    readelf): ELF64 little-endian header, program headers, and the PT_NOTE data when
    it lies within ``head``."""
    if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return
    phoff = struct.unpack_from("<Q", head, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 56 > len(head):
            break
        ptype, _flags, poff, _vaddr, paddr, filesz, memsz = struct.unpack_from(
            "<IIQQQQQ", head, off
        )
        if ptype == 1 and memsz:  # PT_LOAD
            rep.loads.append((paddr, paddr + memsz - 1))
        elif ptype == 4:  # PT_NOTE
            _parse_notes(head[poff : poff + filesz], rep)


def _parse_notes(data: bytes, rep: VmcoreReport) -> None:
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        if namesz == 0 and descsz == 0:
            break
        pos += 12
        name = data[pos : pos + namesz].rstrip(b"\0").decode(errors="replace")
        pos += (namesz + 3) & ~3
        desc = data[pos : pos + descsz]
        pos += (descsz + 3) & ~3
        if name == "CORE" and ntype == NT_PRSTATUS:
            pid = struct.unpack_from("<i", desc, PRSTATUS_PID_OFFSET)[0] if len(desc) >= 36 else -1
            regs = desc[PRSTATUS_REG_OFFSET : PRSTATUS_REG_OFFSET + PRSTATUS_REG_BYTES]
            rep.prstatus.append(Prstatus(len(rep.prstatus), pid, any(regs)))
        else:
            rep.other_notes.append(f"{name}/{ntype}")


def merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def subtract(ranges: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = merge(ranges)
    for ha, hb in holes:
        nxt: list[tuple[int, int]] = []
        for a, b in out:
            if hb < a or ha > b:
                nxt.append((a, b))
                continue
            if a < ha:
                nxt.append((a, ha - 1))
            if hb < b:
                nxt.append((hb + 1, b))
        out = nxt
    return out


def uncovered(need: list[tuple[int, int]], have: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Parts of ``need`` not covered by ``have`` (all end-inclusive)."""
    return subtract(need, merge(have))
