"""Skipped in-kernel updates: when a kernel-log line means "load a fresh image".

The reconciler consumes :class:`~kdumpd.events.kmsg.KernelLogEvent` values through
:meth:`SkippedUpdates.consider`; this module holds the policy and its little state,
so the reconciler only asks "is a fresh load wanted, and why".

- A ``skipped-update`` line printed while one of kdumpd's own loads ran (from the
  start of the syscall until the back-end's post-load topology check, including
  lines the watcher drains right after the syscall) is already covered: a fresh
  load rebuilds everything the kernel reads, and the post-load check
  (:mod:`kdumpd.daemon.backends.inplace`) loads again if the topology moved during
  the syscall.  Reloading for the line too would open one more window without a crash
  image for nothing.  An apply that ends without a load after all (the kernel's
  in-place update sufficed) covers nothing: the lines it held are considered again.
- Any other ``skipped-update`` line: the loaded image may lack a CPU or memory
  change, and nothing will repair it until the next hotplug event.  The state says
  ``Stale`` with the reason, and one fresh load is asked for; further lines before
  that load starts are coalesced into it.  The kernel prints the same line when a
  *reader* of ``crash_hotplug`` loses the trylock (no update was skipped then); the
  two cannot be told apart from the log, so both reload.
- ``update-failed`` (the handler held the lock, but its rebuilt header did not fit the
  loaded segment -- ``elfsz N > memsz M`` -- or could not be built or mapped): the
  same policy as ``skipped-update``.  The handler cannot run during a load syscall
  (it needs the lock), so such a line printed during one of kdumpd's own loads came
  from an event just before the syscall (the fresh load replaces that image) or just
  after it (the post-load topology check sees the event's change; for ``segment``,
  its too-small check loads again at the event's burst).
- ``records-lost`` (``EPIPE``: the ring buffer overran the watcher): a skipped-update
  line may be among the lost records.  It matters only if a hotplug event came since
  the last load (or the last such check): then one fresh load; otherwise nothing.
- A back-end that the kernel does not update in place (``file`` reloads every burst
  anyway, ``dry-run`` loads nothing) and an image unloaded on request ignore both.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

from kdumpd.events.kmsg import KernelLogEvent, KernelLogKind

log = logging.getLogger("kdumpd.daemon.skipped")


def updated_in_place(backend: object) -> bool:
    """The back-end's loaded image is updated by the kernel on hotplug (its optional
    ``updated_in_place`` attribute; back-ends without it reload on every burst)."""
    return bool(getattr(backend, "updated_in_place", False))


class SkippedUpdates:
    def __init__(self) -> None:
        self.wanted = False  # a fresh load is asked for and has not started yet
        self.drain: Callable[[], object] | None = None  # the kernel-log watcher's drain
        self.covered = 0  # skipped-update lines printed during our own loads
        self.reloads = 0  # fresh loads asked for
        self._loading = 0
        self._held: list[list[KernelLogEvent]] = []  # per open own_load() window
        self._events_mark = 0  # hotplug events received at the last load / overrun check

    @contextlib.contextmanager
    def own_load(self) -> Iterator[list[KernelLogEvent]]:
        """Around each apply that may load: lines until its end are covered by its
        load.  Yields the lines it held that way; an apply that made no load after
        all (the kernel's in-place update sufficed) must hand them back to
        :meth:`consider` once the window is closed: no load covered them."""
        held: list[KernelLogEvent] = []
        self._held.append(held)
        self._loading += 1
        try:
            yield held
        finally:
            try:
                if self.drain is not None:
                    self.drain()  # lines printed during the syscall, not yet read
            finally:
                self._loading -= 1
                self._held.remove(held)

    def uncovered(self, held: list[KernelLogEvent]) -> None:
        """The apply that held ``held`` made no load: they were counted as covered."""
        self.covered -= sum(1 for ev in held if ev.kind is not KernelLogKind.RECORDS_LOST)

    def loaded(self, events_received: int) -> None:
        """A load succeeded: it covers every update skipped before it, so a fresh load
        asked for by a line read before it (or during it) is not needed any more."""
        self.wanted = False
        self._events_mark = events_received

    def take(self) -> bool:
        """At the start of a reconcile pass: must it load afresh?"""
        wanted, self.wanted = self.wanted, False
        return wanted

    def consider(
        self,
        ev: KernelLogEvent,
        *,
        backend: object,
        events_received: int,
        unloaded: bool,
    ) -> str:
        """The reason for one fresh load, or "" when ``ev`` needs none (logged)."""
        if ev.kind in (KernelLogKind.SKIPPED_UPDATE, KernelLogKind.UPDATE_FAILED):
            where = f"kernel log: {ev.text!r}" + (f" (seq {ev.seq})" if ev.seq is not None else "")
            if self._loading:
                self.covered += 1
                for held in self._held:
                    held.append(ev)
                log.info(
                    "%s, printed during kdumpd's own load: the post-load topology check covers it",
                    where,
                )
                return ""
            if ev.kind is KernelLogKind.UPDATE_FAILED:
                reason = (
                    "the kernel could not rewrite the loaded elfcorehdr in place and kept the "
                    f"old one (kernel log: {ev.text!r})"
                )
            else:
                reason = (
                    f"the kernel skipped an in-place crash-hotplug update (kernel log: {ev.text!r})"
                )
        else:
            if self._loading:
                for held in self._held:
                    held.append(ev)
                log.info("kernel log records lost during kdumpd's own load: covered by it")
                return ""
            since = events_received - self._events_mark
            self._events_mark = events_received
            if since <= 0:
                log.info(
                    "kernel log records were lost, but no hotplug event came since the "
                    "last load: no in-place update can have been skipped"
                )
                return ""
            reason = (
                f"kernel log records were lost while {since} hotplug event(s) arrived; "
                "a skipped in-place update may be among them"
            )
            where = "kernel log overrun"
        if unloaded or not updated_in_place(backend):
            log.info(
                "%s: ignored (%s)",
                where,
                "the image was unloaded on request"
                if unloaded
                else f"backend {getattr(backend, 'name', '?')} does not rely on in-place updates",
            )
            return ""
        if self.wanted:
            log.info("%s: a fresh load is already pending", where)
            return ""
        self.wanted = True
        self.reloads += 1
        log.warning("%s; the crash image may be stale: loading a fresh one", reason)
        return reason
