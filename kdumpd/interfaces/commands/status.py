"""`kdumpd status` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse
import sys

NAME = "status"
HELP = "status (not implemented yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER)


def run(args: argparse.Namespace) -> int:
    print("kdumpd status: not implemented yet", file=sys.stderr)
    return 2
