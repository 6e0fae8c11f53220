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

from kdumpd.commands.common import (
    add_output_argument,
    add_sizing_arguments,
    add_sysroot_arguments,
    build_image,
    write_buffer,
)
from kdumpd.core.elfcorehdr import HeaderLayout

NAME = "elfcorehdr"
HELP = "write the elfcorehdr (full preallocated buffer) for a topology to a file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_sysroot_arguments(parser, "sysfs/procfs")
    add_sizing_arguments(parser)
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
    _topology, image = build_image(args)
    layout = image.layout
    assert layout is not None  # for_topology always builds
    data = image.elfcorehdr.buf
    write_buffer(data, args.output, lambda target: summary(layout, target))
    return 0
