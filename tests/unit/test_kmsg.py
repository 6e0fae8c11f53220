"""The kernel-log watcher (/dev/kmsg) and the reconciler's skipped-update policy.

The fake streams use the real record format, ``"PRIO,SEQ,USEC,FLAGS;TEXT\\n"`` plus
dictionary lines starting with a space (Documentation/ABI/testing/dev-kmsg)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdumpd.daemon.backends.file import FileBackend, default_files
from kdumpd.daemon.backends.kernel import KernelBackend
from kdumpd.daemon.control import Operations
from kdumpd.daemon.reconciler import Reconciler
from kdumpd.daemon.state import DaemonState, StateStore
from kdumpd.events.event import HotplugEvent
from kdumpd.events.kmsg import (
    KernelLogEvent,
    KernelLogKind,
    KmsgWatcher,
    parse_record,
)
from tests.unit.daemon_fakes import FIXTURE, ScriptedKexec, TopologyHolder, no_sleep, reconciler

SKIP_LINE = "crash hp: kexec_trylock() failed, kdump image may be inaccurate"
OLD_SKIP_LINE = "crash hp: kexec_trylock() failed, elfcorehdr may be inaccurate"
EV = HotplugEvent("online", "memory", "/devices/system/memory/memory512")


def rec(seq: int, text: str, *, prio: int = 6, flags: str = "-", extra: str = "") -> bytes:
    return f"{prio},{seq},{1000 * seq},{flags}{extra};{text}\n".encode()


# ------------------------------------------------------------------ parsing
def test_parse_record_real_format() -> None:
    r = parse_record("6,2381,84512345,-;" + SKIP_LINE)
    assert r is not None
    assert (r.facility, r.level, r.seq, r.usec, r.flags) == (0, 6, 2381, 84512345, "-")
    assert r.text == SKIP_LINE
    # CONFIG_PRINTK_CALLER adds a field; escapes are decoded; ';' in the text stays
    r = parse_record("14,7,12,-,caller=T42;a\\x5cb; c")
    assert r is not None and r.facility == 1 and r.level == 6 and r.text == "a\\b; c"
    for bad in ("", "no semicolon", "6,1;x", "a,b,c,-;x", "6,-1,0,-;x"):
        assert parse_record(bad) is None, bad


# ------------------------------------------------------------------ watcher
class Collector:
    def __init__(self) -> None:
        self.events: list[KernelLogEvent] = []

    def __call__(self, ev: KernelLogEvent) -> None:
        self.events.append(ev)

    @property
    def kinds(self) -> list[KernelLogKind]:
        return [e.kind for e in self.events]


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


async def test_watcher_reports_the_skipped_update_line_from_a_pipe(
    pipe: tuple[int, int],
) -> None:
    r, w = pipe
    got = Collector()
    watcher = KmsgWatcher(got, path="fake-kmsg", opener=lambda _p: r, clock=lambda: 7.0)
    assert watcher.start()
    os.write(w, rec(1, "Linux version 6.12") + rec(2, "memory: hot-added") + b" SUBSYSTEM=memory\n")
    os.write(w, rec(3, SKIP_LINE) + b" DEVICE=+memory:memory40\n")
    await asyncio.sleep(0.05)  # the loop's reader runs
    assert got.events == [KernelLogEvent(KernelLogKind.SKIPPED_UPDATE, SKIP_LINE, 3, 7.0)]
    assert watcher.records == 3
    # the older wording, a record split over two writes, and a fake written by a
    # process (facility 1, LOG_USER: /dev/kmsg never gives userspace facility 0)
    data = rec(4, OLD_SKIP_LINE) + rec(5, SKIP_LINE, prio=14)
    os.write(w, data[:11])
    await asyncio.sleep(0.02)
    os.write(w, data[11:])
    await asyncio.sleep(0.05)
    assert [e.seq for e in got.events] == [3, 4] and got.events[1].text == OLD_SKIP_LINE
    watcher.stop()


def test_watcher_reports_an_in_place_update_the_kernel_could_not_write(
    pipe: tuple[int, int],
) -> None:
    """The handler held the lock but kept the old header: the rebuilt one is larger
    than the loaded segment (x86 and ppc64 wordings), or it could not be built or
    mapped.  x86 prints the first two without a newline; the record ends anyway."""
    r, w = pipe
    got = Collector()
    watcher = KmsgWatcher(got, path="x", opener=lambda _p: r, seek_end=False)
    watcher.fd = r
    lines = [
        "crash hp: update elfcorehdr elfsz 462848 > memsz 16384",
        "crash hp: Updated crash elfcorehdr elfsz 8192 > memsz 4096",
        "crash hp: unable to create new elfcorehdr",
        "crash hp: mapping elfcorehdr segment failed",
    ]
    os.write(w, b"".join(rec(i, text, prio=3) for i, text in enumerate(lines, 1)))
    # not failures: the success line, and the same text written by a process
    os.write(w, rec(5, "crash hp: updated elfcorehdr", prio=7) + rec(6, lines[0], prio=11))
    watcher.drain()
    assert got.kinds == [KernelLogKind.UPDATE_FAILED] * 4
    assert [e.text for e in got.events] == lines and watcher.matched == 4


def test_watcher_joins_continuation_fragments(pipe: tuple[int, int]) -> None:
    r, w = pipe
    got = Collector()
    watcher = KmsgWatcher(got, path="x", opener=lambda _p: r, seek_end=False)
    watcher.fd = r  # drain() without a loop
    os.write(w, rec(1, "crash hp: kexec_try") + rec(2, "lock() failed, kdump image", flags="c"))
    watcher.drain()
    assert got.kinds == [KernelLogKind.SKIPPED_UPDATE] and got.events[0].seq == 2
    os.write(w, rec(3, "an unrelated line") + rec(4, " continued", flags="c"))
    watcher.drain()
    assert len(got.events) == 1


class ScriptedRead:
    """os.read stand-in: each step is bytes or an errno; then EAGAIN."""

    def __init__(self, steps: list[bytes | int], record_size: int | None = None) -> None:
        self.steps = list(steps)
        self.sizes: list[int] = []

    def __call__(self, fd: int, size: int) -> bytes:
        self.sizes.append(size)
        if not self.steps:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        step = self.steps[0]
        if isinstance(step, int):
            self.steps.pop(0)
            raise OSError(step, os.strerror(step))
        if len(step) > size:  # /dev/kmsg: EINVAL, the record stays
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self.steps.pop(0)
        return step


def test_epipe_is_reported_once_per_drain_and_reading_continues(
    pipe: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    r, _w = pipe
    got = Collector()
    read = ScriptedRead(
        [errno.EPIPE, errno.EPIPE, rec(90, "oldest record left"), rec(91, SKIP_LINE)]
    )
    watcher = KmsgWatcher(got, path="x", opener=lambda _p: r, reader=read, seek_end=False)
    watcher.fd = r
    with caplog.at_level(logging.WARNING):
        assert watcher.drain() == 2
    assert got.kinds == [KernelLogKind.RECORDS_LOST, KernelLogKind.SKIPPED_UPDATE]
    assert watcher.lost == 1 and "overwritten" in caplog.text


def test_einval_on_a_short_buffer_retries_with_a_larger_one(pipe: tuple[int, int]) -> None:
    r, _w = pipe
    got = Collector()
    long = rec(5, SKIP_LINE + " " + "x" * 10000)
    read = ScriptedRead([long])
    watcher = KmsgWatcher(got, path="x", opener=lambda _p: r, reader=read, seek_end=False)
    watcher.fd = r
    assert watcher.drain() == 1
    assert read.sizes[:2] == [8192, 16384] and got.kinds == [KernelLogKind.SKIPPED_UPDATE]


def test_unopenable_or_failing_log_is_said_once(
    pipe: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    def denied(path: str) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    watcher = KmsgWatcher(Collector(), sysroot="/nonexistent", opener=denied)
    with caplog.at_level(logging.WARNING):
        assert not watcher.start()
        assert not watcher.start()
    assert caplog.text.count("cannot open /nonexistent/dev/kmsg (Permission denied)") == 1
    r, _w = pipe
    caplog.clear()
    watcher = KmsgWatcher(Collector(), path="x", reader=ScriptedRead([errno.EIO]), seek_end=False)
    watcher.fd = r
    with caplog.at_level(logging.WARNING):
        watcher.drain()
        watcher.drain()
    assert watcher.fd is None and caplog.text.count("no longer watching") == 1


async def test_the_real_dev_kmsg_parses(tmp_path: Path) -> None:
    """Read this machine's kernel log from its start (skipped where unreadable)."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pytest.skip("/dev/kmsg is not readable here")
    got = Collector()
    watcher = KmsgWatcher(got, seek_end=False)
    assert watcher.start()
    try:
        assert watcher.drain() >= 0
        assert watcher.records > 0 or watcher.lost > 0
    finally:
        watcher.stop()
    at_end = KmsgWatcher(got)  # positioned at the end: nothing old is read
    assert at_end.start()
    try:
        at_end.drain()
        assert at_end.records <= 5  # only what the kernel printed in between
    finally:
        at_end.stop()


# ------------------------------------------------------- reconciler's policy
@pytest.fixture
def sysroot(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    rel = (root / "proc/sys/kernel/osrelease").read_text().strip()
    (root / "boot").mkdir()
    (root / f"boot/vmlinuz-{rel}").write_bytes(b"MZ fake kernel")
    (root / "proc/cmdline").write_text("root=/dev/vda1 crashkernel=256M\n")
    (root / "sys/kernel/kexec_crash_loaded").write_text("1\n")
    (root / "sys/devices/system/memory/crash_hotplug").write_text("1\n")
    (root / "sys/devices/system/cpu/crash_hotplug").write_text("1\n")
    return root


def kernel_reconciler(sysroot: Path, kexec: ScriptedKexec, holder: TopologyHolder) -> Reconciler:
    fb = FileBackend(kexec, default_files(sysroot), sysroot)
    return reconciler(sysroot, KernelBackend(fb, sysroot, read_hotplug=lambda _p: True), holder)


def skip_event(seq: int = 1) -> KernelLogEvent:
    return KernelLogEvent(KernelLogKind.SKIPPED_UPDATE, SKIP_LINE, seq, 0.0)


async def test_a_skipped_update_line_marks_stale_and_reloads_once(
    sysroot: Path, pipe: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Someone else held the kexec lock (``kexec -p`` by hand, a crash_hotplug reader)
    while a DIMM came: the kernel logs it and the image lacks the DIMM."""
    kexec, holder = ScriptedKexec(), TopologyHolder()
    r = kernel_reconciler(sysroot, kexec, holder)
    await r.start()
    assert len(kexec.calls) == 1
    holder.add_blocks(2)
    r.event(EV)
    await r.settle()
    assert len(kexec.calls) == 1  # the kernel updates in place ... or says it did not:
    seen: list[DaemonState] = []
    r.store.subscribe(lambda s, ch: seen.append(s) if "stale_reason" in ch else None)
    rfd, w = pipe
    watcher = KmsgWatcher(r.kernel_log, path="fake-kmsg", opener=lambda _p: rfd)
    assert watcher.start()
    r.skipped.drain = watcher.drain
    with caplog.at_level(logging.INFO):
        os.write(w, rec(10, SKIP_LINE) + rec(11, SKIP_LINE) + rec(12, SKIP_LINE))
        await asyncio.sleep(0.05)
        await r.settle()
    assert len(kexec.calls) == 2, "several lines, one fresh load"
    assert (
        seen
        and seen[0].stale
        and "skipped an in-place crash-hotplug update" in (seen[0].stale_reason)
    )
    s = r.store.current
    assert s.loads == 2 and not s.stale and s.stale_reason == ""
    assert s.last_trigger == "kernel log"
    assert "may be stale: loading a fresh one" in caplog.text
    watcher.stop()
    await r.stop()


async def test_an_update_the_kernel_could_not_write_marks_stale_and_reloads(
    sysroot: Path,
) -> None:
    kexec, holder = ScriptedKexec(), TopologyHolder()
    r = kernel_reconciler(sysroot, kexec, holder)
    await r.start()
    holder.add_blocks(1)
    r.event(EV)
    await r.settle()
    assert len(kexec.calls) == 1  # trusted the kernel's in-place update ...
    line = "crash hp: update elfcorehdr elfsz 462848 > memsz 16384"
    r.kernel_log(KernelLogEvent(KernelLogKind.UPDATE_FAILED, line, 41, 0.0))
    s = r.store.current
    assert s.stale and "could not rewrite the loaded elfcorehdr" in s.stale_reason
    assert line in s.stale_reason
    await r.settle()
    assert len(kexec.calls) == 2 and not r.store.current.stale  # ... which it did not make
    await r.stop()


async def test_a_line_printed_during_our_own_load_is_covered_by_it(sysroot: Path) -> None:
    kexec, holder = ScriptedKexec(), TopologyHolder()
    r = kernel_reconciler(sysroot, kexec, holder)
    # the watcher reads the line only when drained at the end of our load
    r.skipped.drain = lambda: r.kernel_log(skip_event())
    await r.start()
    await r.settle()
    assert len(kexec.calls) == 1 and r.skipped.covered == 1 and r.skipped.reloads == 0
    assert not r.store.current.stale
    await r.stop()


async def test_a_line_printed_during_an_in_place_apply_is_not_covered(sysroot: Path) -> None:
    """An apply that ends without a load (the kernel updated in place) covers nothing:
    a skipped-update line read during it still marks the image stale and reloads."""
    kexec, holder = ScriptedKexec(), TopologyHolder()
    r = kernel_reconciler(sysroot, kexec, holder)
    await r.start()
    await r.settle()
    lines = [skip_event()]
    r.skipped.drain = lambda: lines and r.kernel_log(lines.pop())
    holder.add_blocks(1)
    r.event(EV)
    await r.settle()
    assert r.skipped.covered == 0 and r.skipped.reloads == 1
    assert len(kexec.calls) == 2  # the fresh load the line asked for
    assert r.store.current.last_trigger == "kernel log" and not r.store.current.stale
    await r.stop()


async def test_overrun_reloads_only_if_hotplug_events_came(sysroot: Path) -> None:
    kexec, holder = ScriptedKexec(), TopologyHolder()
    r = kernel_reconciler(sysroot, kexec, holder)
    await r.start()
    lost = KernelLogEvent(KernelLogKind.RECORDS_LOST, "lost", None, 0.0)
    r.kernel_log(lost)  # nothing happened since the load: nothing can have been skipped
    await r.settle()
    assert len(kexec.calls) == 1 and not r.store.current.stale
    holder.add_blocks(1)
    r.event(EV)
    await r.settle()
    r.kernel_log(lost)
    assert r.store.current.stale and "records were lost" in r.store.current.stale_reason
    await r.settle()
    assert len(kexec.calls) == 2 and not r.store.current.stale
    r.kernel_log(lost)  # the reload covered everything before it
    await r.settle()
    assert len(kexec.calls) == 2
    await r.stop()


async def test_ignored_when_nothing_relies_on_in_place_updates(sysroot: Path) -> None:
    kexec, holder = ScriptedKexec(), TopologyHolder()
    fb = FileBackend(kexec, default_files(sysroot), sysroot)
    r = Reconciler(
        StateStore(), fb, sysroot=sysroot, read_topology=holder, sleep=no_sleep, quiet=0.002
    )
    await r.start()
    r.kernel_log(skip_event())  # the file backend reloads on every burst anyway
    await r.settle()
    assert len(kexec.calls) == 1 and not r.store.current.stale
    await r.stop()
    r2 = kernel_reconciler(sysroot, kexec, holder)
    await r2.start()
    await Operations(r2).unload()
    r2.kernel_log(skip_event())
    await r2.settle()
    assert len(kexec.calls) == 3  # start's load, the unload; no load after the line
    assert r2.store.current.stale_reason == ""
    await r2.stop()


def test_a_stale_reason_implies_stale() -> None:
    store = StateStore()
    changed = store.update(stale_reason="x")
    assert store.current.stale and changed == {"stale_reason": "x", "stale": True}
    store.update(stale=False)  # a topology match does not clear a known reason
    assert store.current.stale
    store.update(stale_reason="", stale=False)
    assert not store.current.stale


async def test_watcher_on_a_fifo_below_a_sysroot(tmp_path: Path) -> None:
    """The default opener on ``<sysroot>/dev/kmsg`` being a FIFO (lseek fails with
    ESPIPE there and is ignored); a record written in two pieces is reassembled."""
    (tmp_path / "dev").mkdir()
    fifo = tmp_path / "dev" / "kmsg"
    os.mkfifo(fifo)
    got = Collector()
    watcher = KmsgWatcher(got, sysroot=tmp_path)
    assert watcher.start()
    w = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        line = rec(41, SKIP_LINE) + b" SUBSYSTEM=memory\n"
        os.write(w, line[:20])
        await asyncio.sleep(0.05)
        assert got.events == []
        os.write(w, line[20:])
        await asyncio.sleep(0.05)
        assert [e.seq for e in got.events] == [41]
    finally:
        os.close(w)
        watcher.stop()


async def test_end_of_file_stops_watching_only_when_the_loop_sees_it() -> None:
    """A FIFO without a writer reads as end of file: a drain at the end of a load just
    finds nothing; the loop reporting it readable at EOF (the writer went away) stops
    the watcher, which would otherwise spin."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    got = Collector()
    watcher = KmsgWatcher(got, path="fifo", opener=lambda _p: r)
    assert watcher.start()
    os.write(w, rec(1, SKIP_LINE))
    os.close(w)
    assert watcher.drain() == -1 and watcher.fd == r  # read the record, then EOF
    assert [e.seq for e in got.events] == [1]
    await asyncio.sleep(0.05)  # the loop sees the fd readable at EOF
    assert watcher.fd is None


async def test_a_line_read_before_the_first_load_is_covered_by_it(sysroot: Path) -> None:
    """The watcher starts before the first load (so nothing is missed); a line it
    reads then asks for a fresh load, and the start's load is that load."""
    kexec, holder = ScriptedKexec(), TopologyHolder()
    r = kernel_reconciler(sysroot, kexec, holder)
    (sysroot / "sys/kernel/kexec_crash_loaded").write_text("0\n")
    r.kernel_log(skip_event())
    assert r.store.current.stale_reason
    await r.start()
    await r.settle()
    assert len(kexec.calls) == 1 and r.store.current.stale_reason == ""
    await r.stop()
