"""`kdumpd elfcorehdr [--sysroot DIR] [--arch ARCH] [--max-cpus N] [--max-ranges M] -o FILE`.

Builds the elfcorehdr for the topology read from ``DIR`` (default ``/``) exactly as the
daemon would load it and writes the **whole fixed-capacity buffer** (header, then
zeros) to ``FILE`` (``-`` = stdout; the summary then goes to stderr).  Prints one
summary line::

    elfcorehdr: 4 cpu notes + vmcoreinfo, 5 loads, 624/459776 bytes -> FILE

(``loads`` counts the kernel-text PT_LOAD and one PT_LOAD per crash memory range;
``used/capacity``: header bytes / buffer bytes.)

Capacity: ``/sys/kernel/crash_elfcorehdr_size`` when the kernel has it, else the
possible CPUs + 8192 ranges; ``--max-cpus``/``--max-ranges`` override it (see
:mod:`kdumpd.arch.base`).  A header larger than the capacity is an error (exit 1),
never a truncated file.

Exit status: 0 ok, 1 bad input or header too big (one line on stderr), 2 usage.
"""

from __future__ import annotations

import argparse

from kdumpd.arch import get_arch
from kdumpd.commands.common import (
    add_output_argument,
    add_sysroot_arguments,
    write_buffer,
)
from kdumpd.core.elfcorehdr import HeaderLayout
from kdumpd.core.image import CrashImage
from kdumpd.system.topologyreader import read_topology

NAME = "elfcorehdr"
HELP = "write the elfcorehdr (full preallocated buffer) for a topology to a file"


#: Bound for --max-cpus/--max-ranges (the same as kdumpd.toml's): 2^20 entries is a
#: 56 MiB header, far above any kernel's NR_CPUS or CRASH_MAX_MEMORY_RANGES.
MAX_COUNT = 1 << 20


def _count(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"more than {MAX_COUNT}: {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_sysroot_arguments(parser, "sysfs/procfs")
    parser.add_argument(
        "--max-cpus",
        type=_count,
        default=None,
        metavar="N",
        help="size the buffer for N CPU notes (default: from the kernel or possible CPUs)",
    )
    parser.add_argument(
        "--max-ranges",
        type=_count,
        default=None,
        metavar="M",
        help="size the buffer for M memory ranges (default: from the kernel or 8192)",
    )
    add_output_argument(parser)


def summary(layout: HeaderLayout, target: str) -> str:
    """The one-line summary (stable: tests and outside checks parse it)."""
    cpu_notes = len(layout.cpus)
    notes = f"{cpu_notes} cpu note{'s' if cpu_notes != 1 else ''}"
    if layout.vmcoreinfo:
        notes += " + vmcoreinfo"
    loads = f"{layout.loads} load{'s' if layout.loads != 1 else ''}"
    return f"elfcorehdr: {notes}, {loads}, {layout.used}/{layout.capacity} bytes -> {target}"


def run(args: argparse.Namespace) -> int:
    topology = read_topology(args.sysroot, arch=args.arch)
    arch = get_arch(topology.arch)
    capacity = arch.elfcorehdr_capacity(
        topology, max_cpus=args.max_cpus, max_ranges=args.max_ranges
    )
    image = CrashImage.for_topology(arch, topology, capacity)
    layout = image.layout
    assert layout is not None  # for_topology always builds
    data = image.elfcorehdr.buf
    write_buffer(data, args.output, lambda target: summary(layout, target))
    return 0
