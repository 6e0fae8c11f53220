"""`kdumpd fdt [--sysroot DIR] [--arch ARCH] --base BLOB [--capacity N|auto] -o FILE`.

Regenerates the crash FDT (ppc64le) for the topology read from ``DIR`` (default
``/``): the ``/cpus`` node of ``BLOB`` — the flattened device tree the crash image
was loaded with — is rewritten to list exactly the live device tree's ``/cpus``
children, in a buffer of fixed capacity, as the daemon does after CPU hotplug.  The
**whole buffer** (FDT ``totalsize`` = capacity, padding zeroed) is written to
``FILE`` (``-`` = stdout; the summary then goes to stderr).  One summary line::

    fdt: 3 cpu nodes (6 threads), 3 /cpus nodes, 5876/6338 bytes -> FILE

Capacity: ``BLOB``'s ``totalsize`` (the loaded segment cannot grow); ``auto`` sizes
it for every possible core (``possible CPUs / threads per core``), as the kernel
sizes a crash FDT; a number is taken as bytes.  A tree larger than the capacity is
an error (exit 1), never a truncated file.

Exit status: 0 ok, 1 bad input (not an FDT, no device-tree CPU nodes below DIR,
tree too big; one line on stderr), 2 usage.
"""

from __future__ import annotations

import argparse

from kdumpd.arch import FdtArch
from kdumpd.commands.common import (
    add_output_argument,
    add_sysroot_arguments,
    int_argument,
    read_machine,
    write_buffer,
)
from kdumpd.core.errors import InputError, UnsupportedError
from kdumpd.core.fdt import FdtLayout
from kdumpd.system.devicetree import DT_CPUS

NAME = "fdt"
HELP = "write the crash FDT (ppc64le) with its /cpus node regenerated for a topology"


def _capacity(text: str) -> int | str:
    if text == "auto":
        return text
    value = int_argument(text, "a number or 'auto'")
    if value < 40:
        raise argparse.ArgumentTypeError(f"smaller than an FDT header: {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_sysroot_arguments(parser, "sysfs/procfs/device tree")
    parser.add_argument(
        "--base",
        required=True,
        metavar="BLOB",
        help="the flattened device tree the crash image was loaded with (.dtb)",
    )
    parser.add_argument(
        "--capacity",
        type=_capacity,
        default=None,
        metavar="N|auto",
        help="buffer size in bytes (default: BLOB's totalsize; auto: room for every possible core)",
    )
    add_output_argument(parser)


def summary(layout: FdtLayout, target: str) -> str:
    """The one-line summary (stable: tests and outside checks parse it)."""
    cpus = len(layout.cpu_nodes)
    threads = len(layout.threads)
    nodes = len(layout.nodes)
    return (
        f"fdt: {cpus} cpu node{'s' if cpus != 1 else ''} "
        f"({threads} thread{'s' if threads != 1 else ''}), "
        f"{nodes} /cpus node{'s' if nodes != 1 else ''}, "
        f"{layout.used}/{layout.capacity} bytes -> {target}"
    )


def run(args: argparse.Namespace) -> int:
    with open(args.base, "rb") as f:
        base = f.read()
    topology, arch = read_machine(args)
    if not isinstance(arch, FdtArch):
        raise UnsupportedError(f"architecture {arch.name} has no crash FDT to regenerate")
    if not any(n.is_cpu for n in topology.dt_cpus):
        raise InputError(DT_CPUS, "no device-tree cpu nodes below the sysroot to describe")
    if args.capacity == "auto":
        capacity = None
    elif args.capacity is None:
        capacity = int.from_bytes(base[4:8], "big") if len(base) >= 8 else len(base)
    else:
        capacity = args.capacity
    try:
        fdt = arch.new_fdt(topology, base, capacity)
    except InputError as err:  # name the file the user gave, not "FDT"
        raise InputError(args.base, err.problem) from None
    layout = arch.build_fdt(topology, fdt)
    data = fdt.buffer
    write_buffer(data, args.output, lambda target: summary(layout, target))
    return 0
