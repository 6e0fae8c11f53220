"""The ``kdumpd`` command line: dispatch to one module per sub-command.

Exit codes (stable; tests and outside checks rely on them):
0 ok, 1 bad input or failed operation (one line on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from kdumpd import __version__
from kdumpd.core.errors import KdumpdError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# Module names below kdumpd.commands, in the order `--help` lists them.
COMMANDS: tuple[str, ...] = (
    "inspect",
    "elfcorehdr",
    "fdt",
    "segments",
    "run",
    "replay",
    "status",
)

log = logging.getLogger("kdumpd")


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line, as every usage error must."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n")


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"kdumpd.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kdumpd",
        description="Hotplug-aware crash-image daemon for kdump.",
    )
    parser.add_argument("--version", action="version", version=f"kdumpd {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeatable)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        module = _load(name)
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        # also after the sub-command (`kdumpd run -vv`), as the error hints say;
        # counted separately and added to the global -v
        p.add_argument(
            "-v",
            "--verbose",
            dest="sub_verbose",
            action="count",
            default=0,
            help="more log output (repeatable)",
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    from kdumpd.interfaces.logsetup import setup_logging

    setup_logging(verbosity=args.verbose + args.sub_verbose)
    try:
        code: int = args._module.run(args)
    except KdumpdError as err:
        print(f"kdumpd {args.command}: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_FAILURE
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        print(f"kdumpd {args.command}: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as err:  # a bug: one line for the user, the traceback in the log
        log.debug("internal error", exc_info=True)
        print(
            f"kdumpd {args.command}: internal error: {type(err).__name__}: {err}"
            " (run with -vv for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return code


def entry() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    entry()
