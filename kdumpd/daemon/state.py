"""The daemon's one state object and its observers.

The reconciler is the only writer.  D-Bus and sd_notify ``STATUS=`` observe it
through :meth:`StateStore.subscribe`; ``state.json`` is not an observer: the
reconciler records it before it publishes (:mod:`kdumpd.daemon.projection`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack


class ImageState(enum.StrEnum):
    LOADING = "loading"
    LOADED = "loaded"
    UPDATING = "updating"
    DEGRADED = "degraded"
    UNLOADED = "unloaded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class DaemonState:
    """A snapshot of everything the daemon reports.  Ranges are ``(start, end)``,
    end inclusive as in /proc/iomem."""

    state: ImageState = ImageState.UNLOADED
    backend: str = ""
    backend_reason: str = ""  # why this back-end: "configured", the probe's reason, a fallback
    generation: int = 0
    last_update_usec: int = 0  # CLOCK_REALTIME, microseconds
    last_update_duration_usec: int = 0
    last_load_gap_usec: int = 0  # time with no crash image during the last load
    load_gaps_usec: int = 0  # the sum of every load's gap since the daemon started
    last_trigger: str = ""
    events_received: int = 0
    events_coalesced: int = 0
    regenerations: int = 0
    loads: int = 0
    load_failures: int = 0  # passes whose load failed (the fault policy gave up)
    pending_events: int = 0
    present_cpus: tuple[int, ...] = ()
    covered_cpus: tuple[int, ...] = ()
    memory_ranges: tuple[tuple[int, int], ...] = ()
    covered_ranges: tuple[tuple[int, int], ...] = ()
    stale: bool = False
    elfcorehdr_used: int = 0
    elfcorehdr_capacity: int = 0
    crash_kernel_size: int = 0
    kernel_hotplug_support: bool = False
    last_error: str = ""
    # Why the loaded image may be stale although the topology matches (e.g. the kernel
    # skipped an in-place update); "" = no such reason.  A reason implies ``stale``.
    stale_reason: str = ""
    # kernel.kexec_load_limit_panic: crash-image loads the kernel still accepts this
    # boot; -1 = no limit (or a kernel without the sysctl, before 6.3).
    load_limit_panic: int = -1

    def __post_init__(self) -> None:
        if self.stale_reason and not self.stale:
            object.__setattr__(self, "stale", True)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["state"] = str(self.state)
        out["memory_ranges"] = [list(r) for r in self.memory_ranges]
        out["covered_ranges"] = [list(r) for r in self.covered_ranges]
        out["present_cpus"] = list(self.present_cpus)
        out["covered_cpus"] = list(self.covered_cpus)
        return out


class StateChanges(TypedDict, total=False):
    """The fields of :class:`DaemonState` an update may replace, with their types."""

    state: ImageState
    backend: str
    backend_reason: str
    generation: int
    last_update_usec: int
    last_update_duration_usec: int
    last_load_gap_usec: int
    load_gaps_usec: int
    last_trigger: str
    events_received: int
    events_coalesced: int
    regenerations: int
    loads: int
    load_failures: int
    pending_events: int
    present_cpus: tuple[int, ...]
    covered_cpus: tuple[int, ...]
    memory_ranges: tuple[tuple[int, int], ...]
    covered_ranges: tuple[tuple[int, int], ...]
    stale: bool
    elfcorehdr_used: int
    elfcorehdr_capacity: int
    crash_kernel_size: int
    kernel_hotplug_support: bool
    last_error: str
    stale_reason: str
    load_limit_panic: int


StateListener = Callable[[DaemonState, Mapping[str, Any]], None]
ImageListener = Callable[[int, str], None]


class StateStore:
    """Holds the current :class:`DaemonState` and tells listeners what changed."""

    def __init__(self, initial: DaemonState | None = None) -> None:
        self._state = initial or DaemonState()
        self._listeners: list[StateListener] = []
        self._image_listeners: list[ImageListener] = []

    @property
    def current(self) -> DaemonState:
        return self._state

    def subscribe(self, listener: StateListener) -> None:
        """``listener(new_state, changed)`` runs after every update that changed a field."""
        self._listeners.append(listener)

    def on_image_updated(self, listener: ImageListener) -> None:
        """``listener(generation, trigger)`` runs each time a new image is applied."""
        self._image_listeners.append(listener)

    def update(self, **changes: Unpack[StateChanges]) -> Mapping[str, Any]:
        """Replace fields; returns (and broadcasts) only those whose value changed."""
        old = self._state
        new = dataclasses.replace(old, **changes)
        keys = [*changes, "stale"] if "stale_reason" in changes else list(changes)
        changed = {k: getattr(new, k) for k in keys if getattr(old, k) != getattr(new, k)}
        if not changed:
            return changed
        self._state = new
        for listener in list(self._listeners):
            listener(new, changed)
        return changed

    def image_updated(self, generation: int, trigger: str) -> None:
        for listener in list(self._image_listeners):
            listener(generation, trigger)
