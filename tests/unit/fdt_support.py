"""Helpers for the crash-FDT tests: the real ``dtc`` compiles the fixture source and
decompiles every blob we write; libfdt (C) reads property values back.  Nothing
here uses kdumpd's FDT code."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import libfdt
import pytest

from kdumpd.core.topology import DtNode

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
CRASH_DTS = FIXTURES / "synthetic-ppc64le-crash.dts"
BEFORE = FIXTURES / "synthetic-ppc64le-before"
AFTER = FIXTURES / "synthetic-ppc64le-after"


def dtc() -> str:
    exe = shutil.which("dtc")
    if exe is None:
        pytest.skip("dtc (device-tree-compiler) is not installed")
    return exe


def compile_dts(source: str | Path, *, pad: int = 4096, tmp: Path | None = None) -> bytes:
    """``dtc -I dts -O dtb -p PAD`` of a file (or of source text)."""
    exe = dtc()
    args = [exe, "-I", "dts", "-O", "dtb", "-p", str(pad), "-q"]
    if isinstance(source, Path):
        res = subprocess.run([*args, str(source)], capture_output=True, check=False)
    else:
        res = subprocess.run([*args, "-"], input=source.encode(), capture_output=True, check=False)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout


def base_blob() -> bytes:
    if not CRASH_DTS.is_file():
        pytest.skip("tests/fixtures/synthetic-ppc64le-crash.dts is missing")
    return compile_dts(CRASH_DTS)


def decompile(blob: bytes | bytearray) -> str:
    """``dtc -I dtb -O dts``; fails the test if dtc rejects the blob or warns."""
    exe = dtc()
    res = subprocess.run(
        [exe, "-I", "dtb", "-O", "dts", "-"], input=bytes(blob), capture_output=True, check=False
    )
    assert res.returncode == 0, f"dtc rejected the blob: {res.stderr.decode()}"
    return res.stdout.decode()


_OPEN = re.compile(r"^\s*(\S+) \{$")
_PROP = re.compile(r"^\s*([^=\s]+)(?: = (.*))?;$")


def cpus_block(dts: str) -> dict[str, dict[str, str]]:
    """The ``/cpus`` children of a decompiled tree: node name -> {property: dts value}
    (``""`` for empty properties), in the order dtc printed them (dicts keep it)."""
    nodes: dict[str, dict[str, str]] = {}
    path: list[str] = []
    current: dict[str, str] | None = None
    for line in dts.splitlines():
        if m := _OPEN.match(line):
            path.append(m.group(1))
            if path[:2] == ["/", "cpus"] and len(path) == 3:
                current = nodes.setdefault(m.group(1), {})
            continue
        if line.strip() == "};":
            path.pop()
            if len(path) < 3:
                current = None
            continue
        if current is not None and len(path) == 3 and (m := _PROP.match(line)):
            current[m.group(1)] = m.group(2) or ""
    return nodes


def without_cpus(dts: str) -> str:
    """The decompiled tree minus the ``cpus { ... };`` block (everything else)."""
    out: list[str] = []
    skip = 0
    for line in dts.splitlines():
        if skip:
            if line.rstrip().endswith("{"):
                skip += 1
            elif line.strip() == "};":
                skip -= 1
            continue
        if line.strip() == "cpus {":
            skip = 1
            continue
        out.append(line)
    return "\n".join(out)


def libfdt_children(blob: bytes | bytearray) -> list[tuple[str, dict[str, bytes]]]:
    """``/cpus`` children and their properties, read back with libfdt (C)."""
    fdt = libfdt.FdtRo(bytes(blob))
    cpus = fdt.path_offset("/cpus")
    out: list[tuple[str, dict[str, bytes]]] = []
    node = fdt.first_subnode(cpus, libfdt.QUIET_NOTFOUND)
    while node >= 0:
        props: dict[str, bytes] = {}
        off = fdt.first_property_offset(node, libfdt.QUIET_NOTFOUND)
        while off >= 0:
            prop = fdt.get_property_by_offset(off)
            props[prop.name] = bytes(prop)
            off = fdt.next_property_offset(off, libfdt.QUIET_NOTFOUND)
        out.append((fdt.get_name(node), props))
        node = fdt.next_subnode(node, libfdt.QUIET_NOTFOUND)
    return out


def totalsize(blob: bytes | bytearray) -> int:
    return int(struct.unpack_from(">I", blob, 4)[0])


def u32(*cells: int) -> bytes:
    return struct.pack(f">{len(cells)}I", *cells)


def core(reg: int, threads: int = 2, extra: tuple[tuple[str, bytes], ...] = ()) -> DtNode:
    """A small POWER9-like core node (not the fixture's full property set)."""
    props = {
        "device_type": b"cpu\0",
        "reg": u32(reg),
        "ibm,ppc-interrupt-server#s": u32(*range(reg, reg + threads)),
        "ibm,my-drc-index": u32(0x10000000 + reg),
        "status": b"okay\0",
        "64-bit": b"",
        **dict(extra),
    }
    return DtNode(f"PowerPC,POWER9@{reg:x}", tuple(sorted(props.items())))


def cache(unit: int) -> DtNode:
    props = {"device_type": b"cache\0", "reg": u32(unit), "cache-unified": b""}
    return DtNode(f"l2-cache@{unit:x}", tuple(sorted(props.items())))
