"""sd_notify(3) in-house: one AF_UNIX datagram per message to ``$NOTIFY_SOCKET``.

``@name`` addresses the abstract namespace.  Without ``NOTIFY_SOCKET`` every call is
a no-op.  :class:`Notifier` observes the :class:`StateStore`: ``READY=1`` once the
first consistent image is in place, ``STATUS=`` one line on each change of the
state, generation, CPUs, ranges or pending events, and ``WATCHDOG=1`` every
``WATCHDOG_USEC / 2`` from the loop — only when ``WATCHDOG_USEC`` is set (and
``WATCHDOG_PID``, if set, is us).  There is no other timer, so an idle daemon
sleeps until an event or the watchdog.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from kdumpd.daemon.state import DaemonState, ImageState, StateStore

log = logging.getLogger("kdumpd.interfaces.notify")

_STATUS_FIELDS = frozenset(
    {
        "state",
        "generation",
        "covered_cpus",
        "covered_ranges",
        "pending_events",
        "stale",
        "backend",
        "last_error",
    }
)


def sd_notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message``; True if sent, False when not under a notify socket."""
    environ = os.environ if env is None else env
    addr = environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    elif not addr.startswith("/"):
        log.warning("NOTIFY_SOCKET=%r is not a path or @abstract name; ignoring", addr)
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(message.encode(), addr)
        except OSError as err:
            log.warning("sd_notify to %s failed: %s", environ.get("NOTIFY_SOCKET"), err)
            return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None."""
    environ = os.environ if env is None else env
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000


def status_line(s: DaemonState) -> str:
    text = (
        f"{s.state} gen {s.generation}: {len(s.covered_cpus)} CPUs, "
        f"{len(s.covered_ranges)} ranges, {s.pending_events} pending events"
    )
    if s.stale:
        text += ", stale"
    if s.last_error:
        text += f"; error: {s.last_error}"
    return text[:400].replace("\n", " ")


class Notifier:
    def __init__(self, store: StateStore, env: Mapping[str, str] | None = None) -> None:
        self.store = store
        self.env = dict(os.environ if env is None else env)
        self.enabled = bool(self.env.get("NOTIFY_SOCKET"))
        self.ready = False
        self.sent: list[str] = []  # last messages (for tests and `status`)
        self._watchdog: asyncio.TimerHandle | None = None
        self._interval = watchdog_interval(self.env)
        self._last_status = ""
        if self.enabled:
            store.subscribe(self._on_state)

    def send(self, message: str) -> bool:
        ok = sd_notify(message, self.env)
        if ok:
            self.sent.append(message)
            del self.sent[:-50]
        return ok

    def _on_state(self, state: DaemonState, changed: Mapping[str, Any]) -> None:
        if not _STATUS_FIELDS.intersection(changed):
            return
        msg = "STATUS=" + status_line(state)
        if not self.ready and state.state in (ImageState.LOADED, ImageState.DEGRADED):
            self.ready = True
            msg = "READY=1\n" + msg
        if msg != self._last_status:
            self._last_status = msg
            self.send(msg)

    def mark_ready(self) -> None:
        """READY=1 now (start finished even though no image could be loaded)."""
        if self.enabled and not self.ready:
            self.ready = True
            self.send("READY=1\nSTATUS=" + status_line(self.store.current))

    def start_watchdog(self, loop: asyncio.AbstractEventLoop | None = None) -> float | None:
        if not self.enabled or self._interval is None:
            return None
        lp = loop or asyncio.get_running_loop()
        interval = self._interval

        def ping() -> None:
            self.send("WATCHDOG=1")
            self._watchdog = lp.call_later(interval, ping)

        self._watchdog = lp.call_later(interval, ping)
        return interval

    def stopping(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.enabled:
            self.send("STOPPING=1")

    def reloading(self) -> None:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (sd_notify(3): required for
        ``Type=notify-reload`` and used by systemd to order the reload)."""
        if self.enabled:
            self.send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def reloaded(self) -> None:
        """``READY=1`` after a reload, whatever its outcome (else systemd stays in
        "reloading")."""
        if self.enabled:
            self.send("READY=1\nSTATUS=" + status_line(self.store.current))
