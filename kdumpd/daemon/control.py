"""The control surface of the daemon: what D-Bus, kdumpctl and signals may ask for.

The reconciler implements :class:`Controller`; interface layers (D-Bus, the
kdumpctl shim, SIGHUP) call it and never drive a backend themselves.  Every method
is a coroutine that returns once the request has been carried out (or failed).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from kdumpd.core.errors import KdumpdError


class Busy(KdumpdError):
    """A conflicting operation is in progress (e.g. ``unload`` while a load runs).

    ``operation`` names what was requested, ``running`` what blocks it.
    """

    def __init__(self, operation: str, running: str) -> None:
        self.operation = operation
        self.running = running
        super().__init__(f"{operation}: busy, {running} in progress")


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
