"""The control surface of the daemon: what D-Bus, kdumpctl and SIGHUP may ask for.

:class:`Operations` carries each request out on the :class:`Reconciler` (interface
layers never drive a back-end themselves).  Every method is a coroutine that returns
once the request has been carried out, or raises.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from kdumpd.core.errors import KdumpdError
from kdumpd.daemon.backends.base import Trigger
from kdumpd.system.kexec import KexecError

if TYPE_CHECKING:
    from kdumpd.daemon.reconciler import Reconciler

log = logging.getLogger("kdumpd.daemon.control")


class Busy(KdumpdError):
    """A conflicting operation is in progress (e.g. ``unload`` while a load runs).

    ``operation`` names what was requested, ``running`` what blocks it.
    """

    def __init__(self, operation: str, running: str) -> None:
        self.operation = operation
        self.running = running
        super().__init__(f"{operation}: busy, {running} in progress")


class OperationFailed(KdumpdError):
    """A Load or Reload did not leave the requested image loaded (the published state
    and the journal say why)."""


@runtime_checkable
class Controller(Protocol):
    async def reload(self) -> None:
        """Re-read the configuration (the daemon's reload hook, shared with SIGHUP) and
        load a fresh image (one load, no unload first).  Waits for a running burst
        instead of raising Busy; a bad configuration raises InputError and changes
        nothing.  Ends an unload-on-request."""
        ...

    async def rescan(self) -> None:
        """Re-read the topology now and apply it if it changed (no debounce)."""
        ...

    async def load(self) -> None:
        """Load a crash image if none is loaded (no-op when one is); ends an
        unload-on-request."""
        ...

    async def unload(self) -> None:
        """Unload the crash image (explicit administrator request only).  Later bursts,
        rescans and retries load nothing until :meth:`load` or :meth:`reload`."""
        ...

    async def report(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot: state, backend, generation, counters."""
        ...


class Operations:
    """Implements :class:`Controller` on one reconciler (holds no state of its own)."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.rec = reconciler

    def _refuse_if_busy(self, operation: str) -> None:
        running = self.rec.running
        if running:
            raise Busy(operation, running)

    async def rescan(self) -> None:
        async with self.rec.exclusive("rescan"):
            await self.rec.reconcile(Trigger.RESCAN)

    async def reload(self) -> None:
        """Queues behind a running burst: a reload asked for must happen, with the new
        kernel and cmdline.  A configuration that does not load is rolled back."""
        rec = self.rec
        async with rec.exclusive("reload"):
            rollback = rec.reconfigure() if rec.reconfigure is not None else None
            rec.unloaded_on_request = False
            if not await rec.reconcile(Trigger.RELOAD, force_load=True):
                if rollback is not None:
                    rollback()  # a configuration that does not load changes nothing
                    rec.republish_backend()
                    log.error("reload: the new configuration did not load; kept the old one")
                raise OperationFailed(rec.failure("reload"))

    async def load(self) -> None:
        self._refuse_if_busy("load")
        rec = self.rec
        if rec.holds_current_image():
            return
        async with rec.exclusive("load"):
            rec.unloaded_on_request = False
            if not await rec.reconcile(Trigger.LOAD, force_load=True):
                raise OperationFailed(rec.failure("load"))

    async def unload(self) -> None:
        self._refuse_if_busy("unload")
        rec = self.rec
        async with rec.exclusive("unload"):
            try:
                await rec.backend.unload()
            except KexecError as err:
                rec.store.update(last_error=str(err))
                raise
            rec.unloaded()

    async def report(self) -> dict[str, Any]:
        rec = self.rec
        out = rec.store.current.to_json()
        out["operation"] = rec.operation
        out["debounce_quiet_ms"] = round(rec.debouncer.quiet * 1000)
        out["debounce_max_ms"] = round(rec.debouncer.max_staleness * 1000)
        return out
