"""Fast checks of the harness's own parsing (no QEMU): the capture kernel's report,
range arithmetic, the sampler's no-image accounting."""

from __future__ import annotations

import struct

from tests.e2e import vmcore
from tests.e2e.scenarios import Result, _gaps, in_place_proved, stale_reason_matches_dump


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    n = name + b"\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(n), len(desc), ntype) + pad(n) + pad(desc)


def _prstatus(pid: int, regs: bool) -> bytes:
    desc = bytearray(336)
    struct.pack_into("<i", desc, vmcore.PRSTATUS_PID_OFFSET, pid)
    if regs:
        struct.pack_into("<Q", desc, vmcore.PRSTATUS_REG_OFFSET + 16 * 8, 0xFFFFFFFF81000000)
    return bytes(desc)


def test_parse_report_counts_prstatus_and_loads() -> None:
    notes = (
        _note(b"CORE", 1, _prstatus(163, True))
        + _note(b"CORE", 1, _prstatus(0, True))
        + _note(b"VMCOREINFO", 0, b"OSRELEASE=6.1.0\n")
    )
    body = "\n".join(
        [
            "size 1396000000",
            "  NOTE 0x001000 0x0000000000000000 0x0000000000000000 0x000e64 0x000e64 0",
            "  LOAD 0x002000 0xffffffffa3a00000 0x0000000011600000 0x3430000 0x3430000 RWE 0",
            "  LOAD 0x34d1000 0xff2b74bb40100000 0x0000000000100000 0x2ef00000 0x2ef00000 RWE 0",
            f"notes 4096 {len(notes)}",
            "noteshex " + (notes + b"\0" * (4096 - len(notes))).hex(),
        ]
    )
    rep = vmcore.parse(body)
    assert rep.size == 1396000000
    assert rep.loads == [(0x11600000, 0x11600000 + 0x3430000 - 1), (0x100000, 0x2EFFFFFF)]
    assert [(p.index, p.pid, p.has_regs) for p in rep.prstatus] == [(0, 163, True), (1, 0, True)]
    assert rep.other_notes == ["VMCOREINFO/0"]


def test_empty_prstatus_has_no_regs() -> None:
    notes = _note(b"CORE", 1, _prstatus(0, False))
    rep = vmcore.parse(f"notes 0 {len(notes)}\nnoteshex {notes.hex()}")
    assert [p.has_regs for p in rep.prstatus] == [False]


def test_ranges() -> None:
    ram = [(0x1000, 0x9FBFF), (0x100000, 0x3FFDFFFF), (0x100000000, 0x11FFFFFFF)]
    need = vmcore.subtract(ram, [(0x2F000000, 0x3EFFFFFF)])
    assert need == [(0x1000, 0x9FBFF), (0x100000, 0x2EFFFFFF), (0x3F000000, 0x3FFDFFFF),
                    (0x100000000, 0x11FFFFFFF)]  # fmt: skip
    loads = [(0x100000, 0x2EFFFFFF), (0x3F000000, 0x3FFDFFFF)]
    assert vmcore.uncovered(need, loads) == [(0x1000, 0x9FBFF), (0x100000000, 0x11FFFFFFF)]
    assert vmcore.uncovered(loads, need) == []
    assert vmcore.merge([(5, 9), (0, 4), (20, 30), (25, 26)]) == [(0, 9), (20, 30)]


def test_no_image_gaps_after_first_load_only() -> None:
    samples = [
        {"kind": "crash_loaded", "v": "0", "mono": 1.0},  # before the first load: ignored
        {"kind": "crash_loaded", "v": "1", "mono": 5.0},
        {"kind": "crash_loaded", "v": "0", "mono": 6.0},
        {"kind": "crash_loaded", "v": "1", "mono": 6.5},
        {"kind": "uevent", "mono": 7.0},
        {"kind": "crash_loaded", "v": "0", "mono": 8.0},
        {"kind": "uevent", "mono": 8.25},  # last record: the open gap ends here
    ]
    assert _gaps(samples) == (750.0, 2)


def test_parse_ppc64le_head_hex_loads_notes_and_dt_cpus() -> None:
    """ppc64le guests print the head of /proc/vmcore as hex; notes at 64 KiB (64K pages)."""
    notes = _note(b"CORE", 1, _prstatus(0, True)) + _note(b"CORE", 1, _prstatus(7, True))
    phdrs = [
        (4, 0, 0x10000, 0, 0, len(notes), len(notes)),  # PT_NOTE
        (1, 7, 0x20000, 0xC000000000000000, 0, 0x20000000, 0x20000000),  # PT_LOAD
        (1, 7, 0x20020000, 0xC000000040000000, 0x40000000, 0x60000000, 0x60000000),
    ]
    ehdr = bytearray(64)
    ehdr[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<QHH", ehdr, 0x20, 64, 0, 0)
    struct.pack_into("<HH", ehdr, 0x36, 56, len(phdrs))
    head = bytearray(ehdr)
    for p in phdrs:
        head += struct.pack("<IIQQQQQQ", *p, 0)
    head += bytes(0x10000 - len(head)) + notes
    body = (
        f"size 123\nheadhex {head.hex()}\n"
        "dtcpu PowerPC,POWER9@0 reg=00000000 servers=00000000 status=okay\n"
    )
    rep = vmcore.parse(body)
    assert rep.loads == [(0, 0x1FFFFFFF), (0x40000000, 0x9FFFFFFF)]
    assert [p.pid for p in rep.prstatus] == [0, 7] and all(p.has_regs for p in rep.prstatus)
    assert rep.dt_cpus == ["PowerPC,POWER9@0 reg=00000000 servers=00000000 status=okay"]


def _in_place_row(extra_outside: list[list[str]], loads: int = 1) -> Result:
    res = Result(kernel="6.12", scenario="hotplug-add", backend="kdumpd/kexec-tools")
    res.loads = loads
    res.detail["crash_hotplug"] = "1"
    res.extra_ranges = [["0x2ffff000", "0x2ffff85b"], *extra_outside]  # RTAS + these
    res.detail["extra_outside_reservation"] = extra_outside
    return res


def test_in_place_row_ignores_pt_loads_inside_the_reservation() -> None:
    """ppc64's RTAS PT_LOAD lies inside the crashkernel reservation: not removed memory."""
    assert in_place_proved(_in_place_row([]), "hotplug-add") == []


def test_in_place_row_fails_on_removed_memory_and_extra_loads() -> None:
    missing = in_place_proved(_in_place_row([["0x80000000", "0x8fffffff"]], loads=2), "burst")
    assert any("removed memory" in m and "0x80000000" in m for m in missing), missing
    assert any("2 loads" in m for m in missing), missing
    res = _in_place_row([])
    res.detail["crash_hotplug"] = "0"
    assert in_place_proved(res, "hotplug-add") == ["crash_hotplug reads '0', not 1"]


def test_stale_reason_must_name_what_the_dump_lacks() -> None:
    reason = (
        "kexec-tools left 512 MiB of RAM (0x80000000-0x8fffffff and 1 more) out of the "
        "elfcorehdr: it stops at /chosen/linux,memory-limit 0x80000000"
    )
    res = Result(kernel="6.12", scenario="late-start-stale", backend="kdumpd/kexec-tools")
    res.detail["stale_at_start"] = {"stale": True, "stale_reason": reason}
    res.missing_mb = 512.0
    res.missing_ranges = [["0x80000000", "0x9fffffff"]]
    assert stale_reason_matches_dump(res) == []
    res.missing_mb = 768.0
    assert stale_reason_matches_dump(res) == ["the dump lacks 768.0 MiB, the reason says 512 MiB"]
    res.detail["stale_at_start"] = {"stale": False, "stale_reason": ""}
    assert stale_reason_matches_dump(res)
