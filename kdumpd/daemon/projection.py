"""The state projection: what the :class:`StateStore` and ``state.json`` say about an
applied image, built in one place for every kind of pass.

Record first, then publish: whoever sees a new generation (D-Bus, ``STATUS=``) may
restart the daemon, and the restarted daemon must find it in ``state.json``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kdumpd.daemon.backends.base import ApplyResult
from kdumpd.daemon.state import StateChanges, StateStore
from kdumpd.daemon.statefile import Recorded, StateFile, boot_id

if TYPE_CHECKING:
    from kdumpd.core.image import CrashImage
    from kdumpd.core.topology import Topology

log = logging.getLogger("kdumpd.daemon.projection")


def crash_ranges(topology: Topology) -> tuple[tuple[int, int], ...]:
    """The memory the dump must describe: System RAM minus the crash reservation, as
    the architecture's header describes it (x86 leaves out the first MiB); every
    range for an architecture without a back-end."""
    from kdumpd.arch import get_arch
    from kdumpd.core.errors import UnsupportedError
    from kdumpd.core.ranges import crash_memory_ranges

    try:
        ranges = get_arch(topology.arch).dump_ranges(topology)
    except UnsupportedError:
        ranges = crash_memory_ranges(topology)
    return tuple((r.start, r.end) for r in ranges)


def machine_now(topology: Topology) -> StateChanges:
    """``PresentCPUs`` and ``MemoryRanges``: the machine as read now, whatever image is
    loaded (a degraded or unloaded state must not repeat the covered ranges)."""
    return StateChanges(
        present_cpus=tuple(topology.present_cpus), memory_ranges=crash_ranges(topology)
    )


def coverage(topology: Topology | None, image: CrashImage | None) -> StateChanges:
    """What the machine has and what kdumpd's model of the image describes; ``stale``
    when they differ, when there is no model, or when the topology is unknown."""
    if topology is None:
        return StateChanges(
            covered_cpus=(),
            covered_ranges=(),
            elfcorehdr_used=0,
            elfcorehdr_capacity=0,
            stale=True,
        )
    layout = image.layout if image is not None else None
    covered_cpus = tuple(layout.cpus) if layout else ()
    covered = tuple((r.start, r.end) for r in layout.ranges) if layout else ()
    ranges = crash_ranges(topology)
    present = tuple(topology.present_cpus)
    present_set = set(present)
    noted = {n.cpu for n in topology.crash_notes if n.cpu in present_set}
    return StateChanges(
        present_cpus=present,
        covered_cpus=covered_cpus,
        memory_ranges=ranges,
        covered_ranges=covered,
        stale=ranges != covered or not noted <= set(covered_cpus) or image is None,
        elfcorehdr_used=layout.used if layout else 0,
        elfcorehdr_capacity=layout.capacity if layout else 0,
        crash_kernel_size=sum(r.size for r in topology.crashkernel),
    )


def load_outcome(result: ApplyResult, duration_usec: int) -> StateChanges:
    """What one successful apply says about the load itself."""
    changes = StateChanges(
        last_update_usec=time.time_ns() // 1000,
        last_update_duration_usec=duration_usec,
        kernel_hotplug_support=result.kernel_updates_in_place,
    )
    if result.loaded:
        changes["last_load_gap_usec"] = result.gap_usec
    return changes


@dataclass(frozen=True, slots=True)
class Holding:
    """What the reconciler holds: the facts ``state.json`` records."""

    generation: int
    backend: str
    topology_digest: str
    loads: int
    inputs: dict[str, str] = field(default_factory=dict)
    unloaded_on_request: bool = False


class Publisher:
    """Writes ``state.json`` and then the store."""

    def __init__(self, store: StateStore, statefile: StateFile | None, sysroot: str | Path) -> None:
        self.store = store
        self.statefile = statefile
        self.sysroot = sysroot
        self.error = ""  # why the last record failed ("" once one succeeds)

    def record(self, holding: Holding, *, loaded: bool, changes: StateChanges | None = None) -> str:
        """``state.json`` only (``changes``: what is about to be published).

        Returns "" when recorded, else the error line.  A record that cannot be
        written (ENOSPC in the state directory) is removed rather than left stale:
        a restart then loads afresh instead of adopting a generation that is not the
        one loaded."""
        if self.statefile is None:
            return ""
        cur = self.store.current
        new = changes or StateChanges()
        try:
            self.statefile.save(
                Recorded(
                    generation=holding.generation,
                    backend=holding.backend,
                    loaded=loaded,
                    topology_digest=holding.topology_digest,
                    boot_id=boot_id(self.sysroot),
                    loads=holding.loads,
                    inputs=holding.inputs if loaded else {},
                    kernel_hotplug_support=new.get(
                        "kernel_hotplug_support", cur.kernel_hotplug_support
                    ),
                    last_update_usec=new.get("last_update_usec", cur.last_update_usec),
                    unloaded_on_request=holding.unloaded_on_request,
                )
            )
        except OSError as err:
            path = self.statefile.path
            old = self.statefile.load()
            if old is not None and (
                old.generation,
                old.loaded,
                old.topology_digest,
                old.backend,
            ) == (holding.generation, loaded, holding.topology_digest, holding.backend):
                # what is on disk still names the loaded image (e.g. a failed load
                # kept it): adopting it after a restart is right
                log.warning(
                    "cannot update %s: %s; it still records generation %d, which is loaded",
                    path,
                    err.strerror or err,
                    holding.generation,
                )
                return ""
            gone = self.statefile.discard()
            text = (
                f"cannot record generation {holding.generation} in {path}: "
                f"{err.strerror or err}; "
                + (
                    "removed it, a restart loads afresh"
                    if gone
                    else "it is stale, a restart may adopt the wrong generation"
                )
            )
            log.error("%s", text, extra={"STATE_FILE": str(path)})
            self.error = text
            return text
        self.error = ""
        return ""

    def publish(self, holding: Holding, changes: StateChanges) -> None:
        """A loaded image: record it, then tell the store (with the recording error,
        if any, as ``LastError``: the image is loaded, its record is not)."""
        error = self.record(holding, loaded=True, changes=changes)
        if error:
            changes["last_error"] = error
        self.store.update(**changes)
