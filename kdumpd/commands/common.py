"""Arguments and output shared by the sub-commands that read a sysroot and write a
buffer (``inspect``, ``elfcorehdr``, ``fdt``).  Not a sub-command itself."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


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
