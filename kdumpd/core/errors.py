"""Typed errors raised by the core and the readers.

Every error renders as one line that names the input and the problem, so a CLI can
print ``str(err)`` to stderr and exit 1 without a traceback.
"""

from __future__ import annotations

#: Longest input name an error shows (a fuzzed or hostile path can be megabytes).
MAX_SOURCE_CHARS = 512


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` with every non-printable character escaped (a newline from a file
    value, a NUL, a lone surrogate from a JSON escape), so an error naming it stays
    one line that any terminal, log or journal can take; cut at ``limit``."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


class KdumpdError(Exception):
    """Base class of every error kdumpd reports to a user."""


class InputError(KdumpdError):
    """A file or value we read is malformed.

    ``source`` names the input (a path, usually below the sysroot), ``line`` is the
    1-based line number when the problem is on one line.
    """

    def __init__(self, source: str, problem: str, line: int | None = None) -> None:
        self.source = source
        self.problem = problem
        self.line = line
        name = one_line(source, MAX_SOURCE_CHARS)
        where = f"{name}:{line}" if line is not None else name
        super().__init__(f"{where}: {one_line(problem)}")


class CapacityError(KdumpdError):
    """A header does not fit the fixed-capacity buffer it must be written into."""

    def __init__(self, what: str, needed: int, capacity: int) -> None:
        self.what = what
        self.needed = needed
        self.capacity = capacity
        super().__init__(
            f"{what}: needs {needed} bytes but the preallocated buffer holds {capacity}"
        )


class TooLargeError(KdumpdError):
    """A buffer we would allocate is larger than the machine can use (the crash
    reservation it must be placed in, or the RAM).  Raised *before* allocating."""

    def __init__(self, what: str, size: int, limit: int, bound: str) -> None:
        self.what = what
        self.size = size
        self.limit = limit
        super().__init__(f"{what}: {size} bytes is more than {bound} ({limit} bytes)")


class UnsupportedError(KdumpdError):
    """The machine or kernel lacks something this operation needs."""
