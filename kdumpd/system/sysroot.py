"""The one reader of files below a sysroot, and the parsers for sysfs values.

Every path is ``sysroot + the usual absolute path``, so the same code reads the
running machine (``sysroot="/"``) and a captured tree (``tests/fixtures/*``).  Errors
name the file by its usual absolute path (``/sys/devices/system/cpu/cpu3/crash_notes``),
not the sysroot path: an unreadable or malformed file raises
:class:`~kdumpd.core.errors.InputError` with the file and line, a missing one gives
``None`` unless it is required.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from kdumpd.core.errors import InputError

__all__ = [
    "MAX_CPU",
    "Opener",
    "Sysroot",
    "decode",
    "one_line",
    "parse_bool01",
    "parse_cpulist",
    "parse_dec",
    "parse_hex",
]

log = logging.getLogger("kdumpd.system.sysroot")

#: Highest CPU number accepted in a cpulist (the kernel's NR_CPUS limit is 8192 on
#: x86_64; this bound only stops a corrupt file from allocating gigabytes).
MAX_CPU = (1 << 16) - 1

#: Opens a file for binary reading; replaceable in tests (e.g. to raise EBUSY).
Opener = Callable[[str], BinaryIO]


def _open_binary(path: str) -> BinaryIO:
    return open(path, "rb")


class Sysroot:
    """Files below one sysroot; errors name the usual absolute path."""

    def __init__(self, sysroot: str | Path = "/", opener: Opener | None = None) -> None:
        root = os.fspath(sysroot)
        if not root:
            raise InputError("sysroot", "empty path (use / for the running system)")
        self.open: Opener = opener if opener is not None else _open_binary
        self.is_host = os.path.realpath(root) == "/"
        self.prefix = "" if self.is_host else root.rstrip("/")

    @classmethod
    def of(cls, sysroot: str | Path | Sysroot) -> Sysroot:
        return sysroot if isinstance(sysroot, Sysroot) else cls(sysroot)

    def path(self, abspath: str) -> str:
        """Where the usual absolute path ``abspath`` is below this sysroot."""
        return self.prefix + (abspath if abspath.startswith("/") else "/" + abspath)

    def _stat(self, abspath: str) -> os.stat_result | None:
        """A stat (no sysfs ``show()`` runs); ``None`` when the file does not exist.
        A path the kernel refuses to look up (ENAMETOOLONG, EACCES, ELOOP) or one with
        a NUL is an InputError naming it and the reason, not "absent": a kernel path
        from kdump-utils' files must not silently fall back to another kernel."""
        full = self.path(abspath)
        try:
            return os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as err:
            raise InputError(full, err.strerror or str(err)) from None
        except ValueError:
            raise InputError(full, "path contains a NUL byte") from None

    def exists(self, abspath: str) -> bool:
        """The file exists (a stat: no sysfs ``show()`` runs)."""
        return self._stat(abspath) is not None

    def is_file(self, abspath: str) -> bool:
        st = self._stat(abspath)
        return st is not None and stat.S_ISREG(st.st_mode)

    def read(self, abspath: str, *, required: bool = False, limit: int = -1) -> str | None:
        """ASCII text of a file, ``None`` when it does not exist (or raise if ``required``)."""
        data = self.read_bytes(abspath, required=required, limit=limit)
        if data is None:
            return None
        return decode(data, abspath)

    def read_text(self, abspath: str) -> str | None:
        """UTF-8 text of a configuration file of the system below the sysroot, ``None``
        when it does not exist.  Errors name the file where it is (with the sysroot):
        it is the user's file, not a kernel interface."""
        full = self.path(abspath)
        try:
            with self.open(full) as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as err:  # EACCES, EISDIR, EIO, ENAMETOOLONG: one line naming the file
            raise InputError(full, err.strerror or str(err)) from None
        except ValueError:  # a NUL in the path
            raise InputError(full, "path contains a NUL byte") from None
        try:
            return data.decode()
        except UnicodeDecodeError as err:
            line = data.count(b"\n", 0, err.start) + 1
            raise InputError(full, f"not UTF-8 text (byte {data[err.start]:#04x})", line) from None

    def read_value(self, abspath: str) -> str | None:
        """The stripped text of a one-value file; ``None`` when it is missing, busy or
        unreadable (for values with a fallback, e.g. ``osrelease``, ``boot_id``)."""
        try:
            text = self.read(abspath)
        except InputError:
            return None
        return None if text is None else text.strip()

    def read_bytes(self, abspath: str, *, required: bool = False, limit: int = -1) -> bytes | None:
        try:
            with self.open(self.path(abspath)) as f:
                return f.read(limit)
        except (FileNotFoundError, NotADirectoryError):
            if required:
                raise InputError(abspath, "missing (not a kernel sysroot?)") from None
            return None
        except IsADirectoryError:
            raise InputError(abspath, "is a directory, expected a file") from None
        except PermissionError:
            raise InputError(abspath, "permission denied (root-only file; run as root)") from None
        except OSError as err:
            if err.errno == errno.EBUSY:
                log.info("%s: busy (kexec lock held); treated as absent", abspath)
                return None
            raise InputError(abspath, f"cannot read: {err.strerror or err}") from None

    def first(self, *abspaths: str) -> tuple[str, str] | None:
        """``(path, text)`` of the first of ``abspaths`` that exists (old and new
        sysfs names of one value)."""
        for p in abspaths:
            text = self.read(p)
            if text is not None:
                return p, text
        return None

    def numbered_dirs(self, abspath: str, pattern: re.Pattern[str]) -> list[tuple[int, str]]:
        """``(N, name)`` of every directory below ``abspath`` whose name matches
        ``pattern`` (one group: N), ascending."""
        found: list[tuple[int, str]] = []
        try:
            with os.scandir(self.path(abspath)) as it:
                for entry in it:
                    m = pattern.fullmatch(entry.name)
                    if m and entry.is_dir():
                        found.append((int(m.group(1)), entry.name))
        except (FileNotFoundError, NotADirectoryError):
            return []
        found.sort()
        return found

    def open_dir(self, abspath: str) -> int:
        """A directory descriptor for :func:`read_at` (the caller closes it)."""
        try:
            return os.open(self.path(abspath), os.O_RDONLY | os.O_DIRECTORY)
        except OSError as err:
            raise InputError(abspath, f"cannot open: {err.strerror}") from None


def read_at(dir_fd: int, name: str, base: str) -> bytes | None:
    """Read a small file ``name`` relative to the directory fd of ``base`` (its usual
    absolute path, for errors); ``None`` if it does not exist.  An 8,192-CPU tree then
    costs one ``open`` + ``read`` per file and no path walks."""
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        raise InputError(f"{base}/{name}", "permission denied (root-only; run as root)") from None
    except OSError as err:
        raise InputError(f"{base}/{name}", f"cannot open: {err.strerror or err}") from None
    try:
        return os.read(fd, 4096)
    except OSError as err:
        if err.errno == errno.EBUSY:
            log.info("%s/%s: busy; treated as absent", base, name)
            return None
        raise InputError(f"{base}/{name}", f"cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)


# ------------------------------------------------------------------------ parsers


def decode(data: bytes, source: str) -> str:
    """ASCII text of a kernel file; a non-ASCII byte is an error naming its line."""
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise InputError(source, f"non-ASCII byte {data[err.start]:#04x}", line) from None


def one_line(text: str, source: str) -> str:
    """The single line of a one-value sysfs file, without its newline."""
    line, _, rest = text.partition("\n")
    if rest.strip():
        raise InputError(source, "expected one line, found more", 2)
    if not line.strip():
        raise InputError(source, "empty", 1)
    return line.strip()


#: Most digits a sysfs number may have: the kernel prints at most 64 bits (20
#: decimal, 16 hex digits).  Checked before int(), which refuses more than 4,300
#: digits with a ValueError and costs quadratic time below that.
MAX_DEC_DIGITS = 20
MAX_HEX_DIGITS = 16


def _check_digits(value: str, source: str, limit: int, what: str) -> None:
    digits = len(value.lstrip("0"))
    if digits > limit:
        raise InputError(source, f"expected {what}, found a number of {digits} digits", 1)


def _int(text: str, source: str, base: int, what: str) -> int:
    value = one_line(text, source)
    _check_digits(value, source, MAX_HEX_DIGITS if base == 16 else MAX_DEC_DIGITS, what)
    try:
        n = int(value, base)
    except ValueError:
        raise InputError(source, f"expected {what}, found {value[:40]!r}", 1) from None
    if n < 0:
        raise InputError(source, f"expected {what}, found a negative number", 1)
    return n


def parse_hex(text: str, source: str, what: str = "a hexadecimal number") -> int:
    """``"%llx\\n"``: hexadecimal without ``0x``."""
    value = one_line(text, source)
    if value.startswith(("0x", "0X", "+", "-", "_")) or "_" in value:
        raise InputError(source, f"expected {what} without 0x, found {value[:40]!r}", 1)
    return _int(value, source, 16, what)


def parse_dec(text: str, source: str, what: str = "a decimal number", *, bits: int = 64) -> int:
    """``"%u\\n"``/``"%zu\\n"``: ASCII decimal digits, at most ``bits`` wide."""
    value = one_line(text, source)
    if not (value.isascii() and value.isdigit()):
        raise InputError(source, f"expected {what}, found {value[:40]!r}", 1)
    _check_digits(value, source, MAX_DEC_DIGITS, what)
    n = int(value)
    if n >> bits:
        raise InputError(source, f"expected {what}, found {n}: more than {bits} bits", 1)
    return n


def parse_bool01(value: str, source: str, line: int = 1, name: str = "the value") -> bool:
    """``"0"`` or ``"1"``, as sysfs flags and kdump.conf's ``force_rebuild`` spell it."""
    if value not in ("0", "1"):
        raise InputError(source, f"{name} must be 0 or 1, not {value[:40]!r}", line)
    return value == "1"


def _ascii_digits(s: str) -> bool:
    """ASCII digits only: str.isdigit() is also true for '²', which int() refuses."""
    return s.isascii() and s.isdigit()


def parse_cpulist(text: str, source: str) -> tuple[int, ...]:
    """Parse the kernel's cpulist format (``"0-3,8-11,16\\n"``; empty = no CPUs)."""
    line, _, rest = text.partition("\n")
    if rest.strip():
        raise InputError(source, "expected one line, found more", 2)
    line = line.strip()
    if not line:
        return ()
    cpus: list[int] = []
    last = -1
    for part in line.split(","):
        lo_s, dash, hi_s = part.partition("-")
        if not _ascii_digits(lo_s) or (dash and not _ascii_digits(hi_s)):
            raise InputError(source, f"bad cpulist element {part[:40]!r}", 1)
        # MAX_CPU has 5 digits: a longer number is out of range before int() sees it
        # (a 5,000-digit one would make int() raise ValueError)
        for n_s in (lo_s, hi_s):
            if len(n_s.lstrip("0")) > len(str(MAX_CPU)):
                raise InputError(source, f"CPU number {n_s[:20]}... is above {MAX_CPU}", 1)
        lo = int(lo_s)
        hi = int(hi_s) if dash else lo
        if hi > MAX_CPU:
            raise InputError(source, f"CPU number {hi} is above {MAX_CPU}", 1)
        if hi < lo or lo <= last:
            raise InputError(source, f"cpulist is not ascending at {part[:40]!r}", 1)
        cpus.extend(range(lo, hi + 1))
        last = hi
    return tuple(cpus)
