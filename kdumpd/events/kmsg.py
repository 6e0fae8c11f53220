"""The kernel log (``/dev/kmsg``) as an event source: skipped crash-hotplug updates.

On a kernel that updates the loaded crash image in place (CONFIG_CRASH_HOTPLUG,
6.6+), the hotplug handler only try-locks the kexec lock.  When anything holds it --
a load or unload (ours or ``kexec -p``), a read of ``crash_hotplug`` or
``kexec_crash_size`` -- the handler logs one line and returns without updating::

    crash hp: kexec_trylock() failed, kdump image may be inaccurate

(``"elfcorehdr may be inaccurate"`` before the wording was generalised; the
``crash hp: `` prefix is the ``pr_fmt`` of kernel/crash_core.c's hotplug section).
When the handler does hold the lock, the architecture's rebuild can still fail and
leave the old header in place, again with one error line only (x86,
arch/x86/kernel/crash.c ``arch_crash_handle_hotplug_event()``)::

    crash hp: update elfcorehdr elfsz 8192 > memsz 4096
    crash hp: unable to create new elfcorehdr
    crash hp: mapping elfcorehdr segment failed

(the first when the rebuilt header is larger than the loaded segment; ppc64 prints
``... crash elfcorehdr elfsz N > memsz M``).  Those are reported as
:attr:`KernelLogKind.UPDATE_FAILED`.  The kernel log is the only place either is
reported, so kdumpd reads it.

How ``/dev/kmsg`` is read (Documentation/ABI/testing/dev-kmsg):

- opened ``O_RDONLY | O_NONBLOCK``; ``lseek(fd, 0, SEEK_END)`` at start, so only
  records printed after the daemon started are seen (an old line says nothing about
  the image kdumpd is about to load);
- each ``read()`` returns exactly one record, ``"PRIO,SEQ,USEC,FLAGS[,...];TEXT\\n"``
  followed by optional dictionary lines that start with a space; ``PRIO`` is
  ``facility << 3 | level``;
- ``EAGAIN``: nothing more to read; ``EINVAL``: the buffer is smaller than the next
  record (it is not consumed: retry with a larger buffer); ``EPIPE``: records were
  overwritten in the ring buffer before they were read (the next read continues
  with the oldest record still there).

Only records of facility 0 (the kernel) count: a process writing to ``/dev/kmsg``
gets facility 1 (``LOG_USER``) at least, so it cannot fake the kernel's line.

The watcher reads on the daemon's loop (``loop.add_reader``, no thread) and turns
what it finds into typed :class:`KernelLogEvent` values for the reconciler.  Sources
that are not ``/dev/kmsg`` (a FIFO or a file in tests) may return several records per
read or a record in pieces; records are reassembled at newlines either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("kdumpd.events.kmsg")

KMSG = "dev/kmsg"
READ_SIZE = 8192  # the kernel's longest extended record (CONSOLE_EXT_LOG_MAX)
MAX_READ_SIZE = 1 << 20  # EINVAL beyond this: skip to the end rather than stall
MAX_PARTIAL = 64 << 10  # bytes of an unterminated record kept (non-kmsg sources)

#: The kernel's crash-hotplug handler skipped an update (both wordings).
SKIPPED_UPDATE = re.compile(r"crash hp: kexec_trylock\(\) failed")
#: The handler held the lock but could not rewrite the header (docs/kernel-interfaces.md
#: §9.1): too large for the loaded segment (x86 and ppc64 wording), or x86's rebuild or
#: mapping failed.  The old header stays.
UPDATE_FAILED = re.compile(
    r"elfcorehdr elfsz \d+ > memsz \d+"
    r"|crash hp: unable to create new elfcorehdr"
    r"|crash hp: mapping elfcorehdr segment failed"
)

Opener = Callable[[str], int]
Reader = Callable[[int, int], bytes]  # os.read


class KernelLogKind(enum.StrEnum):
    SKIPPED_UPDATE = "skipped-update"  # "crash hp: kexec_trylock() failed"
    UPDATE_FAILED = "update-failed"  # "crash hp: update elfcorehdr elfsz N > memsz M", ...
    RECORDS_LOST = "records-lost"  # EPIPE: the ring buffer overran our position


@dataclass(frozen=True, slots=True)
class KernelLogEvent:
    """A typed trigger from the kernel log."""

    kind: KernelLogKind
    text: str  # the record's text, or what was lost
    seq: int | None = None  # the record's sequence number
    received_at: float = 0.0  # the watcher's clock (monotonic seconds)


KernelLogSink = Callable[[KernelLogEvent], None]


@dataclass(frozen=True, slots=True)
class KmsgRecord:
    facility: int
    level: int
    seq: int
    usec: int
    flags: str
    text: str


_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def parse_record(line: str) -> KmsgRecord | None:
    """One ``/dev/kmsg`` record line (without its newline); None if malformed."""
    prefix, sep, text = line.partition(";")
    if not sep:
        return None
    fields = prefix.split(",")
    if len(fields) < 4:
        return None
    try:
        prio, seq, usec = int(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        return None
    if prio < 0 or seq < 0 or usec < 0:
        return None
    # the kernel escapes non-printable bytes (and backslash) as \xNN
    text = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    return KmsgRecord(prio >> 3, prio & 7, seq, usec, fields[3], text)


class KmsgWatcher:
    """Watch ``<sysroot>/dev/kmsg`` (or ``path``) and report skipped updates to ``sink``.

    ``opener`` returns a non-blocking fd for a path (tests pass a pipe's read end),
    ``reader`` reads it (``os.read``; tests script errnos); ``clock`` stamps the
    events.  :meth:`drain` reads everything available now; the reconciler calls it at
    the end of each of its loads, so that lines printed during the syscall are
    attributed to it."""

    def __init__(
        self,
        sink: KernelLogSink,
        *,
        sysroot: str | Path = "/",
        path: str | Path | None = None,
        opener: Opener | None = None,
        reader: Reader = os.read,
        clock: Callable[[], float] = time.monotonic,
        seek_end: bool = True,
    ) -> None:
        self.sink = sink
        self.path = str(path) if path is not None else str(Path(sysroot) / KMSG)
        self.opener = opener or _open_nonblocking
        self.reader = reader
        self.clock = clock
        self.seek_end = seek_end
        self.fd: int | None = None
        self.records = 0  # kernel records read
        self.matched = 0  # skipped-update and update-failed lines seen
        self.lost = 0  # EPIPE overruns
        self._loop: asyncio.AbstractEventLoop | None = None
        self._size = READ_SIZE
        self._partial = b""
        self._cont = ""  # text of a record being continued by 'c'-flagged fragments
        self._said: set[str] = set()

    # ---------------------------------------------------------------- lifecycle
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Open and watch; False (logged once) when the log cannot be opened."""
        try:
            fd = self.opener(self.path)
        except OSError as err:
            self._once(
                "open",
                "cannot open %s (%s): a crash-hotplug update the kernel skips outside "
                "kdumpd's own loads will not be noticed",
                self.path,
                err.strerror or err,
            )
            return False
        if self.seek_end:
            try:
                os.lseek(fd, 0, os.SEEK_END)
            except OSError as err:
                if err.errno not in (errno.ESPIPE, errno.EINVAL):  # a FIFO in tests
                    log.debug("%s: lseek(SEEK_END): %s", self.path, err.strerror)
        self.fd = fd
        self._loop = loop or asyncio.get_running_loop()
        self._loop.add_reader(fd, self._readable)
        log.info("watching %s for skipped crash-hotplug updates", self.path)
        return True

    def stop(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(fd)
        os.close(fd)

    def _once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(msg, *args)

    # ------------------------------------------------------------------ reading
    def _readable(self) -> None:
        if self.drain() < 0:  # readable at end of file: it would stay readable
            self._once("eof", "%s: end of file; no longer watching it", self.path)
            self.stop()

    def drain(self) -> int:
        """Read every record available now; returns how many were read, or -1 at end
        of file (a FIFO without a writer, a file: never /dev/kmsg)."""
        fd = self.fd
        if fd is None:
            return 0
        n = 0
        lost = False
        while True:
            try:
                data = self.reader(fd, self._size)
            except BlockingIOError:  # EAGAIN: nothing more for now
                break
            except InterruptedError:
                continue
            except OSError as err:
                if err.errno == errno.EPIPE:  # the next read gets the oldest record left
                    if not lost:  # one report per drain, before the records that follow
                        lost = True
                        self._records_lost()
                    continue
                if err.errno == errno.EINVAL and self._size < MAX_READ_SIZE:
                    self._size *= 2  # the record did not fit; it was not consumed
                    continue
                if err.errno == errno.EINVAL:
                    self._once(
                        "einval",
                        "%s: a record longer than %d bytes; skipping to the end of the log",
                        self.path,
                        MAX_READ_SIZE,
                    )
                    self._skip_to_end(fd)
                    break
                self._once(
                    "read",
                    "reading %s failed (%s); no longer watching it for skipped "
                    "crash-hotplug updates",
                    self.path,
                    err.strerror or err,
                )
                self.stop()
                break
            if not data:
                return -1
            n += self._feed(data)
        return n

    def _records_lost(self) -> None:
        self.lost += 1
        log.warning(
            "%s: kernel log records were overwritten before kdumpd read them; a "
            "skipped crash-hotplug update may be among them",
            self.path,
        )
        self._cont = ""
        self.sink(
            KernelLogEvent(
                KernelLogKind.RECORDS_LOST,
                "kernel log records were lost (ring buffer overrun)",
                None,
                self.clock(),
            )
        )

    def _skip_to_end(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_END)

    def _feed(self, data: bytes) -> int:
        buf = self._partial + data
        lines = buf.split(b"\n")
        self._partial = lines.pop()  # b"" when the data ended with a newline
        if len(self._partial) > MAX_PARTIAL:
            self._once(
                "partial",
                "%s: an unterminated record over %d bytes; dropped",
                self.path,
                MAX_PARTIAL,
            )
            self._partial = b""
        n = 0
        for raw in lines:
            if not raw or raw.startswith(b" "):  # dictionary lines (" KEY=value")
                continue
            rec = parse_record(raw.decode("utf-8", "replace"))
            if rec is None:
                log.debug("%s: malformed record %r", self.path, raw[:80])
                continue
            n += 1
            self._record(rec)
        return n

    def _record(self, rec: KmsgRecord) -> None:
        if rec.facility != 0:  # written by a process, not printed by the kernel
            return
        self.records += 1
        # Fragments of one line (pr_cont() pieces the kernel could not merge) are
        # flagged 'c' (and '+' on old kernels): match on the joined text too.
        if rec.flags[:1] in ("c", "+") and self._cont:
            self._cont += rec.text
        else:
            self._cont = rec.text
        text = self._cont
        kind = _kind(text)
        if kind is None and text is not rec.text:  # a joined line: the fragment alone
            text = rec.text
            kind = _kind(text)
        if kind is None:
            return
        self._cont = ""  # one match per line, however it was split
        self.matched += 1
        self.sink(KernelLogEvent(kind, text.strip(), rec.seq, self.clock()))


def _kind(text: str) -> KernelLogKind | None:
    if SKIPPED_UPDATE.search(text):
        return KernelLogKind.SKIPPED_UPDATE
    if UPDATE_FAILED.search(text):
        return KernelLogKind.UPDATE_FAILED
    return None


def _open_nonblocking(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
