#!/usr/bin/env python3
"""Benchmark: crash FDT /cpus regeneration (ppc64le) for 2,048 CPUs.

Run from the repository root: ``.venv/bin/python bench/fdt.py [--runs N]``.  Prints
one table per machine shape; every number is the median of ``--runs`` timed runs
after one warm-up, with the baselines measured in the same process on the same
input, and every result checked to describe the same ``/cpus`` children (read back
with libfdt).

Shapes: 2,048 CPUs as 256 SMT8 cores (a large POWER9/10 LPAR: 256 cpu nodes) and as
2,048 SMT1 cores (2,048 cpu nodes, the worst case).  Each cpu node carries the 29
properties of the fixture's QEMU pseries POWER9 node (~1 KiB encoded).  The base blob
is the fixture's crash FDT minus one core (the hot-add), padded for every core.

Rows:
* ``CrashFdt.write (warm)`` - what the daemon runs per CPU burst: the node
  encodings of unchanged cores are cached, the hot-added core is encoded, the blob
  is assembled, checked with ``fdt_check_full()`` and copied into the fixed buffer.
* ``CrashFdt.write (cold)`` - the same with the encoding cache emptied first (the
  first regeneration after load).
* ``baseline: libfdt in place`` - the kernel's ``update_cpus_node()`` approach with
  pylibfdt on a copy of the buffer: ``del_node(/cpus)``, ``add_subnode`` and
  ``setprop`` for every node/property (each insertion moves the rest of the blob).
* ``baseline: FdtSw rebuild`` - re-emit the whole tree with libfdt's sequential
  writer (walking the base with libfdt), new ``/cpus`` included, then pad to the
  capacity.
* ``baseline: dtc -p`` - render the whole tree as .dts text and compile it with
  ``dtc -I dts -O dtb -p`` (a process per regeneration); fewer runs.
* ``read dt_cpus (sysfs)`` - the reader's cost to collect the nodes from a
  ``/sys/firmware/devicetree/base/cpus`` tree (one file per property).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import libfdt

from kdumpd.core.fdt import CrashFdt, order_nodes, required_capacity
from kdumpd.core.topology import DtNode
from kdumpd.system.devicetree import read_dt_node
from tests.fixtures.make_ppc64le_fixture import cpu_node_props, crash_dts

NCPUS = 2048


def node(reg: int, threads: int) -> DtNode:
    props = cpu_node_props(reg)
    props["ibm,ppc-interrupt-server#s"] = struct.pack(f">{threads}I", *range(reg, reg + threads))
    return DtNode(f"PowerPC,POWER9@{reg:x}", tuple(sorted(props.items())))


def compile_dts(text: str, pad: int = 0) -> bytes:
    res = subprocess.run(
        ["dtc", "-I", "dts", "-O", "dtb", "-p", str(pad), "-q", "-"],
        input=text.encode(),
        capture_output=True,
        check=True,
    )
    return res.stdout


def children(blob: bytes | bytearray) -> list[tuple[str, dict[str, bytes]]]:
    fdt = libfdt.FdtRo(bytes(blob))
    cpus = fdt.path_offset("/cpus")
    out: list[tuple[str, dict[str, bytes]]] = []
    n = fdt.first_subnode(cpus, libfdt.QUIET_NOTFOUND)
    while n >= 0:
        props: dict[str, bytes] = {}
        off = fdt.first_property_offset(n, libfdt.QUIET_NOTFOUND)
        while off >= 0:
            p = fdt.get_property_by_offset(off)
            props[p.name] = bytes(p)
            off = fdt.next_property_offset(off, libfdt.QUIET_NOTFOUND)
        out.append((fdt.get_name(n), props))
        n = fdt.next_subnode(n, libfdt.QUIET_NOTFOUND)
    return out


# ------------------------------------------------------------------------ baselines


def libfdt_in_place(buffer: bytearray, nodes: Sequence[DtNode]) -> None:
    """The kernel's update_cpus_node() with pylibfdt, on a copy, copied back."""
    work = libfdt.Fdt(bytearray(buffer))
    cpus = work.path_offset("/cpus")
    keep = [
        (p.name, bytes(p))
        for p in (work.get_property_by_offset(o) for o in _prop_offsets(work, cpus))
    ]
    work.del_node(cpus)
    cpus = work.add_subnode(0, "cpus")
    for name, value in keep:
        work.setprop(cpus, name, value)
    for n in reversed(order_nodes(nodes)):  # add_subnode inserts as the first child
        sub = work.add_subnode(cpus, n.name)
        for name, value in n.properties:
            work.setprop(sub, name, value)
    data = work.as_bytearray()
    buffer[:] = data


def _prop_offsets(fdt: libfdt.FdtRo, node: int) -> list[int]:
    out = []
    off = fdt.first_property_offset(node, libfdt.QUIET_NOTFOUND)
    while off >= 0:
        out.append(off)
        off = fdt.next_property_offset(off, libfdt.QUIET_NOTFOUND)
    return out


def fdtsw_rebuild(buffer: bytearray, base: bytes, nodes: Sequence[DtNode]) -> None:
    """Re-emit the whole base tree with FdtSw, replacing /cpus' children."""
    src = libfdt.FdtRo(base)
    sw = libfdt.FdtSw(len(buffer))
    for i in range(src.num_mem_rsv()):
        addr, size = src.get_mem_rsv(i)
        sw.add_reservemap_entry(addr, size)
    sw.finish_reservemap()

    def emit(offset: int, name: str, path: str) -> None:
        with sw.add_node(name):
            for o in _prop_offsets(src, offset):
                p = src.get_property_by_offset(o)
                sw.property(p.name, bytes(p))
            if path == "/cpus":
                for n in order_nodes(nodes):
                    with sw.add_node(n.name):
                        for key, value in n.properties:
                            sw.property(key, value)
                return
            child = src.first_subnode(offset, libfdt.QUIET_NOTFOUND)
            while child >= 0:
                cname = src.get_name(child)
                emit(child, cname, f"{path.rstrip('/')}/{cname}")
                child = src.next_subnode(child, libfdt.QUIET_NOTFOUND)

    emit(0, "", "/")
    fdt = sw.as_fdt()
    fdt.resize(len(buffer))
    buffer[:] = fdt.as_bytearray()


def dtc_rebuild(buffer: bytearray, nodes: Sequence[DtNode]) -> None:
    """Render the whole tree as .dts and compile it with dtc -p."""
    head, _, tail = crash_dts(()).partition("\t\t#size-cells = <0>;\n")
    lines = [head + "\t\t#size-cells = <0>;"]
    for n in order_nodes(nodes):
        lines.append(f"\t\t{n.name} {{")
        for key, value in n.properties:
            lines.append(f"\t\t\t{key} = [{value.hex(' ')}];" if value else f"\t\t\t{key};")
        lines.append("\t\t};")
    text = "\n".join(lines) + "\n" + tail
    blob = compile_dts(text)
    pad = len(buffer) - len(blob)
    buffer[:] = compile_dts(text, pad) if pad > 0 else blob


# ------------------------------------------------------------------------- timing


def median_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e6, min(times) / 1e6


def shape(threads: int, runs: int) -> list[tuple[str, float, float, float | None]]:
    cores = [node(reg, threads) for reg in range(0, NCPUS, threads)]
    boot = cores[:-1]  # the last core is hot-added
    base_small = compile_dts(crash_dts(()))  # no cpu nodes: we write them
    probe = CrashFdt(base_small)
    capacity = required_capacity(probe, cores, possible_threads=NCPUS)
    fdt = CrashFdt(base_small, capacity)
    fdt.write(boot)
    base = bytes(fdt.buffer)  # the "loaded" blob: boot cores, padded for all
    buf = fdt.buffer
    expected = [(n.name, dict(n.properties)) for n in order_nodes(cores)]

    def warm() -> None:
        fdt.write(boot)  # reset to the loaded state (cached), not timed
        t0 = time.perf_counter_ns()
        fdt.write(cores)
        warm_times.append(time.perf_counter_ns() - t0)

    warm_times: list[int] = []
    warm()
    warm_times.clear()
    for _ in range(runs):
        warm()
    w_med = statistics.median(warm_times) / 1e6
    w_min = min(warm_times) / 1e6
    assert fdt.buffer is buf and len(buf) == capacity
    assert children(buf) == expected

    def cold() -> None:
        fdt._cache.clear()
        fdt.write(cores)

    c_med, c_min = median_ms(cold, runs)
    assert children(buf) == expected

    other = bytearray(base)
    libfdt_in_place(other, cores)
    assert children(other) == expected and len(other) == capacity
    l_med, l_min = median_ms(lambda: libfdt_in_place(bytearray(base), cores), max(3, runs // 5))

    sw_buf = bytearray(capacity)
    fdtsw_rebuild(sw_buf, base, cores)
    assert children(sw_buf) == expected
    s_med, s_min = median_ms(lambda: fdtsw_rebuild(sw_buf, base, cores), runs)

    rows: list[tuple[str, float, float, float | None]] = [
        (f"CrashFdt.write (warm) [{len(cores)} nodes, {capacity} B]", w_med, w_min, None),
        ("CrashFdt.write (cold cache)", c_med, c_min, None),
        ("  baseline: libfdt in place (kernel-style)", l_med, l_min, l_med / w_med),
        ("  baseline: FdtSw rebuild", s_med, s_min, s_med / w_med),
    ]
    if shutil.which("dtc"):
        dtc_buf = bytearray(capacity)
        dtc_rebuild(dtc_buf, cores)
        # dtc deletes a "name" property that only repeats the node name
        assert children(dtc_buf) == [
            (name, {k: v for k, v in props.items() if k != "name"}) for name, props in expected
        ]
        d_med, d_min = median_ms(lambda: dtc_rebuild(dtc_buf, cores), max(3, runs // 5))
        rows.append(("  baseline: dtc -p (whole tree)", d_med, d_min, d_med / w_med))

    with tempfile.TemporaryDirectory() as tmp:
        cpus_dir = Path(tmp) / "cpus"
        for n in cores:
            d = cpus_dir / n.name
            d.mkdir(parents=True)
            for key, value in n.properties:
                (d / key).write_bytes(value)
        read = read_dt_node(str(cpus_dir), "/cpus", "cpus", 0).children
        assert {n.name for n in read} == {n.name for n in cores}
        r_med, r_min = median_ms(
            lambda: read_dt_node(str(cpus_dir), "/cpus", "cpus", 0), max(3, runs // 5)
        )
        rows.append(("read dt_cpus (sysfs tree, page cache hot)", r_med, r_min, None))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=21, help="timed runs per row (default 21)")
    args = ap.parse_args()
    if shutil.which("dtc") is None:
        print("dtc is not installed: the base blob is compiled with it", file=sys.stderr)
        return 1
    for threads in (8, 1):
        print(f"\n2,048 CPUs, SMT{threads}:")
        rows = shape(threads, args.runs)
        print(f"{'case':<58} {'median ms':>10} {'min ms':>9} {'vs warm':>8}")
        for name, med, mn, ratio in rows:
            r = f"{ratio:.1f}x" if ratio is not None else ""
            print(f"{name:<58} {med:>10.2f} {mn:>9.2f} {r:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
