"""One module per ``kdumpd`` sub-command.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``.  :mod:`kdumpd.cli` lists them in ``COMMANDS``.
"""

from __future__ import annotations
