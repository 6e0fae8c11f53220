"""Logging: the journal (structured fields) under systemd, plain stderr otherwise.

Library code logs through :mod:`logging` with ``extra={"GENERATION": ..., ...}``;
UPPERCASE extra keys become journal fields when the journal is used.
"""

from __future__ import annotations

import logging
import os
import sys

_JOURNAL_SOCKET = "/run/systemd/journal/socket"


def _under_journal() -> bool:
    # systemd sets JOURNAL_STREAM when stderr is connected to the journal.
    return bool(os.environ.get("JOURNAL_STREAM")) and os.path.exists(_JOURNAL_SOCKET)


def setup_logging(verbosity: int = 0, *, force_stderr: bool = False) -> str:
    """Configure the root ``kdumpd`` logger; returns ``"journal"`` or ``"stderr"``."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    named = os.environ.get("KDUMPD_LOG_LEVEL", "").upper()
    bad_level = bool(named) and not isinstance(logging.getLevelName(named), int)
    if named and not bad_level:
        level = logging.getLevelName(named)
    logger = logging.getLogger("kdumpd")
    logger.setLevel(level)
    for h in list(logger.handlers):
        logger.removeHandler(h)
    logger.propagate = False
    handler: logging.Handler
    kind = "stderr"
    if not force_stderr and _under_journal():
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER="kdumpd")
            kind = "journal"
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("kdumpd: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    if bad_level:
        logger.warning("KDUMPD_LOG_LEVEL=%s is not a log level; ignored", named)
    return kind
