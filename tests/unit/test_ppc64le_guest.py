"""ppc64le against sysroots captured from real guests: Debian's ppc64el 6.1 and 6.12
kernels under QEMU pseries (POWER9, one thread per core), before and after hot-adding
two CPU cores and a 512 MiB DIMM (``python -m tests.e2e.fixtures --arch ppc64le``).

The synthetic trees (tests/fixtures/synthetic-ppc64le-*) stay for what these guests
cannot show: SMT cores (several ``ibm,ppc-interrupt-server#s`` per node) and an FDT
base loaded with room for hot-added cores.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kdumpd.arch import FdtArch, get_arch
from kdumpd.system.topologyreader import read_topology

from .fdt_support import FIXTURES, compile_dts

KERNELS = ("6.1", "6.12")
# What the capture kernel's /proc/device-tree/cpus showed after a crash on CPU 2 of
# such a guest (make e2e ARCH=ppc64le, hotplug-add): name, reg, interrupt servers.
CAPTURE_CPUS = [
    ("PowerPC,POWER9@0", 0, (0,)),
    ("PowerPC,POWER9@1", 1, (1,)),
    ("PowerPC,POWER9@2", 2, (2,)),
]


def tree(kernel: str, phase: str) -> Path:
    path = FIXTURES / f"guest-ppc64le-{kernel}-{phase}"
    if not path.is_dir():
        pytest.skip(f"{path.name} is missing")
    return path


@pytest.mark.parametrize("kernel", KERNELS)
def test_real_guest_before_and_after_hot_add(kernel: str) -> None:
    before, after = read_topology(tree(kernel, "before")), read_topology(tree(kernel, "after"))
    assert before.arch == after.arch == "ppc64le"
    assert before.present_cpus == (0,) and after.present_cpus == (0, 1, 2)
    assert [n.name for n in before.dt_cpus if n.is_cpu] == ["PowerPC,POWER9@0"]
    cpus = [(n.name, n.reg, n.interrupt_servers) for n in after.dt_cpus if n.is_cpu]
    assert cpus == CAPTURE_CPUS
    ram = lambda t: sum(r.end - r.start + 1 for r in t.system_ram)  # noqa: E731
    assert ram(after) - ram(before) == 512 << 20
    assert before.image_key() != after.image_key()


@pytest.mark.parametrize("kernel", KERNELS)
def test_crash_fdt_for_the_real_guest_matches_what_the_capture_kernel_booted_with(
    kernel: str,
) -> None:
    """kdumpd's crash FDT for the after-hot-add tree lists exactly the CPU nodes the
    capture kernel found in the FDT kexec-tools built for the same guest."""
    topo = read_topology(tree(kernel, "after"))
    arch = get_arch(topo.arch)
    assert isinstance(arch, FdtArch)
    base = compile_dts(
        "/dts-v1/;\n/ { #address-cells = <2>; #size-cells = <2>; cpus { "
        "#address-cells = <1>; #size-cells = <0>; }; chosen { }; };\n"
    )
    fdt = arch.new_fdt(topo, base, None)
    layout = arch.build_fdt(topo, fdt)
    import libfdt

    blob = libfdt.FdtRo(bytearray(fdt.buffer))
    got = []
    node = blob.first_subnode(blob.path_offset("/cpus"), libfdt.QUIET_NOTFOUND)
    while node >= 0:
        reg = blob.getprop(node, "reg", libfdt.QUIET_NOTFOUND)
        if not isinstance(reg, int):
            servers = blob.getprop(node, "ibm,ppc-interrupt-server#s")
            status = blob.getprop(node, "status").as_str()
            got.append(
                (blob.get_name(node), reg.as_uint32(), tuple(servers.as_uint32_list()), status)
            )
        node = blob.next_subnode(node, libfdt.QUIET_NOTFOUND)
    assert [(n, r, s) for n, r, s, _ in got] == CAPTURE_CPUS
    assert {st for *_, st in got} == {"okay"}
    assert len(layout.cpu_nodes) == 3


@pytest.mark.parametrize("kernel", KERNELS)
def test_crashkernel_comes_from_chosen(kernel: str) -> None:
    """ppc64's /proc/iomem has no ``Crash kernel`` line; /chosen has the reservation."""
    topo = read_topology(tree(kernel, "after"))
    assert "Crash kernel" not in (tree(kernel, "after") / "proc/iomem").read_text()
    assert [(r.start, r.end) for r in topo.crashkernel] == [(0x20000000, 0x3FFFFFFF)]


def test_elfcorehdr_for_the_real_guest_covers_what_the_real_vmcore_had() -> None:
    """kdumpd's ppc64 elfcorehdr for the 6.1 guest after the hot-add: the RAM ranges
    equal the PT_LOADs of the vmcore the capture kernel read after kdumpd's kexec-tools
    load (make e2e ARCH=ppc64le, 6.1 hotplug-add: 0-0x1fffffff and 0x40000000-0x9fffffff,
    plus RTAS, which kexec-tools adds inside the reservation and kdumpd does not)."""
    from kdumpd.arch.ppc64le import Ppc64le
    from kdumpd.core.elfcorehdr import Elfcorehdr

    arch = Ppc64le()
    topo = read_topology(tree("6.1", "after"))
    hdr = Elfcorehdr(arch.elfcorehdr_capacity(topo), arch.elf_machine)
    layout = arch.build_elfcorehdr(topo, hdr)
    buf = bytes(hdr.buffer)
    phoff = struct.unpack_from("<Q", buf, 0x20)[0]
    (phnum,) = struct.unpack_from("<H", buf, 0x38)
    loads = []
    for i in range(phnum):
        ptype, _, _, _, paddr, _, memsz = struct.unpack_from("<IIQQQQQ", buf, phoff + i * 56)
        if ptype == 1:
            loads.append((paddr, paddr + memsz - 1))
    vmcore_ram = [(0x0, 0x1FFFFFFF), (0x40000000, 0x9FFFFFFF)]
    merged: list[tuple[int, int]] = []
    for a, b in sorted(loads):
        if merged and a == merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    assert merged == vmcore_ram
    assert layout.loads == len(loads)
