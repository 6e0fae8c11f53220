"""CPU/memory uevents from netlink through pyudev, on the asyncio loop (no threads).

One monitor with ``filter_by("cpu")`` and ``filter_by("memory")`` (kernel-side BPF
filters, one socket so events stay in SEQNUM order), read with
``loop.add_reader(fileno, drain)``; ``drain`` calls ``poll(0)`` until it returns
None.  Source ``udev`` (events after udevd processed them) is preferred; without
udevd (``/run/udev/control`` absent) nothing is ever re-broadcast on that group,
so ``auto`` falls back to ``netlink`` (the kernel's own uevents) and logs which one
it uses.

The two sources are the two multicast groups of ``NETLINK_KOBJECT_UEVENT``: the
kernel's broadcast (``netlink``; pyudev calls it ``kernel``) and udevd's re-broadcast
(``udev``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from kdumpd.core.errors import InputError, UnsupportedError
from kdumpd.events.event import EventSink, HotplugEvent, event_from_fields

log = logging.getLogger("kdumpd.events.udev")

UDEV_CONTROL = "/run/udev/control"
RECEIVE_BUFFER = 32 << 20


# kdumpd's source name -> pyudev's (Monitor.from_netlink(source=...))
PYUDEV_SOURCE = {"udev": "udev", "netlink": "kernel"}


def choose_source(requested: str, udev_control: str = UDEV_CONTROL) -> str:
    """``udev`` or ``netlink``: the requested one, or for ``auto`` the one that works."""
    if requested in PYUDEV_SOURCE:
        return requested
    if requested != "auto":
        raise ValueError(f"unknown event source {requested!r} (auto, udev or netlink)")
    return "udev" if os.path.exists(udev_control) else "netlink"


class UdevSource:
    """Feed validated :class:`HotplugEvent` values from a pyudev monitor into ``sink``."""

    def __init__(
        self,
        sink: EventSink,
        *,
        source: str = "auto",
        clock: Callable[[], float] = time.monotonic,
        udev_control: str = UDEV_CONTROL,
    ) -> None:
        self.sink = sink
        self.requested = source
        self.source = choose_source(source, udev_control)
        self.clock = clock
        self.received = 0
        self.dropped = 0  # malformed uevents
        self.lost = 0  # ENOBUFS overflows (uevents the kernel dropped)
        self._monitor: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        try:
            import pyudev
        except ImportError as err:  # libudev1 missing
            raise UnsupportedError(f"udev event source: {err}") from None
        ctx = pyudev.Context()
        mon = pyudev.Monitor.from_netlink(ctx, source=PYUDEV_SOURCE[self.source])
        mon.filter_by("cpu")
        mon.filter_by("memory")
        try:
            mon.set_receive_buffer_size(RECEIVE_BUFFER)
        except Exception as err:  # needs CAP_NET_ADMIN; the default buffer still works
            log.debug("udev: cannot enlarge the receive buffer: %s", err)
        mon.start()
        self._monitor = mon
        self._loop = loop or asyncio.get_running_loop()
        self._loop.add_reader(mon.fileno(), self.drain)
        why = (
            "requested"
            if self.requested != "auto"
            else ("udevd is running" if self.source == "udev" else f"{UDEV_CONTROL} is absent")
        )
        log.info(
            "listening for cpu/memory uevents from source %r (%s)",
            self.source,
            why,
            extra={"EVENT_SOURCE": self.source},
        )

    def drain(self) -> None:
        mon = self._monitor
        if mon is None:
            return
        while True:
            try:
                dev = mon.poll(0)
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    # The socket buffer overflowed and the kernel dropped uevents; the
                    # socket is still good.  A lost uevent must not leave a stale image:
                    # a synthetic event makes the next burst re-read the whole topology.
                    self.lost += 1
                    log.warning("udev: uevents lost (ENOBUFS), rescanning")
                    self.sink(self._rescan_event())
                    continue
                # Anything else would fail again at once: stop reading (no busy loop),
                # say so, and rescan once with what we have.
                log.error(
                    "udev: receive error %s; no more hotplug events from this source "
                    "(restart kdumpd; rescan via D-Bus or SIGHUP still works)",
                    err,
                )
                self.stop()
                self.sink(self._rescan_event())
                return
            if dev is None:
                return
            try:
                # pyudev decodes each field strictly with the file-system encoding:
                # bytes that are not UTF-8 raise UnicodeDecodeError on access.
                fields = (dev.action, dev.subsystem, dev.device_path)
                seqnum = dev.properties.get("SEQNUM")
                ev = event_from_fields(
                    *fields, seqnum, self.clock(), source=f"uevent {fields[2]!r:.200}"
                )
            except InputError as err:
                self.dropped += 1
                log.warning("dropped uevent: %s", err)
                continue
            except UnicodeDecodeError as err:
                self.dropped += 1
                log.warning("dropped uevent: a field is not valid UTF-8 (%s)", err.reason)
                continue
            self.received += 1
            self.sink(ev)

    @staticmethod
    def _rescan_event() -> HotplugEvent:
        return event_from_fields("change", "memory", "/devices/system/memory")

    def stop(self) -> None:
        if self._monitor is not None and self._loop is not None:
            self._loop.remove_reader(self._monitor.fileno())
        self._monitor = None
