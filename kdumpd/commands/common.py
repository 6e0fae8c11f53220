"""Arguments and output shared by the sub-commands that read a sysroot and write a
buffer (``inspect``, ``elfcorehdr``, ``fdt``, ``segments``).  Not a sub-command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kdumpd.core.arch import Arch
    from kdumpd.core.image import CrashImage
    from kdumpd.core.topology import Topology

#: Bound for --max-cpus/--max-ranges (the same as kdumpd.toml's): 2^20 entries is a
#: 56 MiB header, far above any kernel's NR_CPUS or CRASH_MAX_MEMORY_RANGES.
MAX_COUNT = 1 << 20


def int_argument(text: str, expected: str = "a number") -> int:
    """An integer option value (``0x`` prefixes allowed); usage error otherwise."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {expected}: {text!r}") from None


def count_argument(text: str) -> int:
    """``--max-cpus``/``--max-ranges``: 0 to :data:`MAX_COUNT`."""
    value = int_argument(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"more than {MAX_COUNT}: {text!r}")
    return value


def add_sysroot_arguments(parser: argparse.ArgumentParser, reads: str = "sysfs/procfs") -> None:
    """``--sysroot DIR`` and ``--arch ARCH``, as every reader of a machine takes them."""
    parser.add_argument(
        "--sysroot",
        default="/",
        metavar="DIR",
        help=f"read {reads} below DIR instead of / (a captured tree)",
    )
    parser.add_argument(
        "--arch", default=None, help="architecture (default: /proc/sys/kernel/arch in DIR)"
    )


def add_sizing_arguments(parser: argparse.ArgumentParser) -> None:
    """``--max-cpus N`` and ``--max-ranges M``: the elfcorehdr buffer's sizing."""
    parser.add_argument(
        "--max-cpus",
        type=count_argument,
        default=None,
        metavar="N",
        help="size the buffer for N CPU notes (default: from the kernel or possible CPUs)",
    )
    parser.add_argument(
        "--max-ranges",
        type=count_argument,
        default=None,
        metavar="M",
        help="size the buffer for M memory ranges (default: from the kernel or 8192)",
    )


def read_machine(args: argparse.Namespace) -> tuple[Topology, Arch]:
    """The topology below ``--sysroot`` and its architecture's :class:`Arch`."""
    from kdumpd.arch import get_arch
    from kdumpd.system.topologyreader import read_topology

    topology = read_topology(args.sysroot, arch=args.arch)
    return topology, get_arch(topology.arch)


def build_image(args: argparse.Namespace) -> tuple[Topology, CrashImage]:
    """The crash image the daemon would build for the machine below ``--sysroot``,
    sized by ``--max-cpus``/``--max-ranges``."""
    from kdumpd.core.image import CrashImage

    topology, arch = read_machine(args)
    capacity = arch.elfcorehdr_capacity(
        topology, max_cpus=args.max_cpus, max_ranges=args.max_ranges
    )
    return topology, CrashImage.for_topology(arch, topology, capacity)


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="where to write the buffer ('-' = stdout)",
    )


def write_buffer(
    data: bytes | bytearray | memoryview, output: str, summary: Callable[[str], str]
) -> None:
    """Write the whole fixed-capacity buffer to ``output`` (``-`` = stdout) and print
    ``summary(target)``: on stdout, or on stderr when the bytes go to stdout."""
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        print(summary("stdout"), file=sys.stderr)
    else:
        with open(output, "wb") as f:
            f.write(data)
        print(summary(output))
