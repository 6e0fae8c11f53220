"""A load on a kernel that keeps the loaded crash image current itself: check the
topology around the syscall, and load once more if it moved meanwhile.

Why (docs/kernel-interfaces.md §9.1): a load syscall holds
the kernel's kexec lock from start to end.  The kernel's crash-hotplug handler only
*try*-locks it; when a CPU or memory block comes or goes while any load runs, the
handler prints ``crash hp: kexec_trylock() failed, kdump image may be inaccurate``
and returns without touching the image.  The image the syscall installs describes
the machine as the kernel read it inside the syscall, so whatever changed after that
point is missing from the dump, and nothing will update it until the next hotplug
event.  kdumpd's own loads (start, Reload, repairs) are such loads.

The check: read the topology key (``Topology.image_key()`` digest, the same key the
reconciler compares) right before the syscall and right after it.  Equal keys: any
event during the syscall changed nothing the image depends on (or the syscall saw it
already).  Different keys: an update may have been skipped, so load once more; a
fresh load rebuilds everything from the live state.  If the topology moves again
during that one extra load, the guard does not loop: it records the reason in
:attr:`LoadRaceGuard.suspect`, and the back-end's next apply (the burst of those very
events) loads instead of trusting the in-place update.

Used by the ``kernel`` and ``kexec-tools`` back-ends, whose header is built after the
"before" read: by the kernel inside ``kexec_file_load``, or by ``kexec`` after it
starts.  The ``segment`` back-end (its own ``kexec_load`` with
``KEXEC_UPDATE_ELFCOREHDR``) has the same race but loads a header it built *before*
the syscall, so a read right before the syscall is the wrong "before": an event
between building the header and the syscall updates the *old* image in place, the
syscall then replaces it with a header that lacks the event, and two reads after the
event agree.  That back-end passes ``before=`` the key of the topology its header was
built from.  Loading the same bytes again would not help either, so it also passes
``retry=False``: the guard only records the suspicion; the reconciler's re-read right
after the load (or the burst of those very events) rebuilds the header from the new
topology, and the back-end loads it because :attr:`LoadRaceGuard.suspect` is set.

:class:`RemovedRam` is the other reason such a back-end loads on a burst: the kernel
rebuilds its header at ``MEM_OFFLINE``, while the block is still ``System RAM``, and not
again when it is removed (docs/kernel-interfaces.md §3).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from kdumpd.core.errors import UnsupportedError
from kdumpd.core.ranges import subtract
from kdumpd.core.topology import MemRange, Topology
from kdumpd.daemon.backends.base import ApplyResult
from kdumpd.system.kexecsysfs import crash_image_loaded

log = logging.getLogger("kdumpd.daemon.backends.inplace")

#: Reads the topology now and returns its image-key digest; None when it cannot be
#: read (then nothing can be compared and no extra load is made).
KeyReader = Callable[[], "str | None"]

#: Seconds between the two ``crash_hotplug`` reads after a load when the first reads 0.
HOTPLUG_REREAD_DELAY = 0.1

RACE_REASON = (
    "the topology changed while the load syscall held the kexec lock, so the kernel "
    "may have skipped its in-place update"
)


def _key(read_key: KeyReader | None) -> str | None:
    if read_key is None:
        return None
    try:
        return read_key()
    except Exception as err:  # a read error must not fail a load that succeeded
        log.warning("cannot re-read the topology around the load: %s", err)
        return None


async def read_hotplug_after_load(
    read: Callable[[Path], bool | None],
    sysroot: Path,
    sleep: Callable[[float], Awaitable[None]],
    delay: float,
) -> bool | None:
    """``crash_hotplug`` right after our own load.  Its ``show()`` returns 0 whenever
    its own ``kexec_trylock()`` fails (docs/kernel-interfaces.md §2), so one 0 cannot
    tell "the lock was busy" from "this image is not updated in place": a 0 is read
    once more after ``delay`` seconds, and only that second read counts."""
    flag = read(sysroot)
    if flag is False:
        await sleep(delay)
        flag = read(sysroot)
    return flag


class LoadRaceGuard:
    """Wraps one back-end's load syscall; see the module docstring."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.suspect = ""  # why the loaded image may lack an update ("" = no reason known)
        self.extra_loads = 0  # loads made because the topology moved during a load

    async def load(
        self,
        load: Callable[[], Awaitable[ApplyResult]],
        read_key: KeyReader | None,
        *,
        retry: bool = True,
        before: str | None = None,
    ) -> ApplyResult:
        """Run ``load``; if the topology moved meanwhile, load once more (``retry``)
        or only record the reason in :attr:`suspect` (``retry=False``).

        ``before``: the key of the topology the image being loaded describes, for a
        loader that built it before this call; None reads it right now (the image is
        built after this point)."""
        if before is None:
            before = _key(read_key)
        first = await load()
        self.suspect = ""
        after = _key(read_key)
        if before is None or after is None or before == after:
            return first
        if not retry:
            self.suspect = RACE_REASON
            log.warning(
                "backend %s: %s; the next pass rebuilds the header and loads it",
                self.backend,
                RACE_REASON,
                extra={"BACKEND": self.backend, "RELOAD_REASON": "topology-changed-during-load"},
            )
            return first
        self.extra_loads += 1
        log.warning(
            "backend %s: %s; loading once more",
            self.backend,
            RACE_REASON,
            extra={"BACKEND": self.backend, "RELOAD_REASON": "topology-changed-during-load"},
        )
        second = await load()
        again = _key(read_key)
        if again is not None and again != after:
            self.suspect = (
                "the topology changed again during the extra load (the kernel may have "
                "skipped that update too)"
            )
            log.warning("backend %s: %s; the next burst loads afresh", self.backend, self.suspect)
        return ApplyResult(
            loaded=True,
            gap_usec=first.gap_usec + second.gap_usec,
            kernel_updates_in_place=second.kernel_updates_in_place,
            detail=f"{second.detail}; loaded twice ({RACE_REASON})",
            loads=first.load_count + second.load_count,
        )


class InPlaceLoader:
    """What the back-ends whose loaded image the kernel may update in place share
    (``kernel``, ``segment``, ``kexec-tools``): ``stale_reason`` from their
    :class:`LoadRaceGuard` and ``is_loaded``."""

    sysroot: Path
    race: LoadRaceGuard

    @property
    def stale_reason(self) -> str:
        """Why the image just loaded may lack an update ("" = no known reason)."""
        return self.race.suspect

    def is_loaded(self) -> bool:
        return crash_image_loaded(self.sysroot)


class RemovedRam:
    """Notices System RAM that was hot-removed since the previous burst.

    The kernel rebuilds its in-place elfcorehdr on MEM_OFFLINE, while the block's
    ``System RAM`` resource still exists; the resource is released only when the
    memory is removed, and no notifier runs then (docs/kernel-interfaces.md §3).  So
    after a hot-remove the loaded header keeps a PT_LOAD over memory that is no
    longer there (seen on Debian 6.12 in QEMU: docs/e2e.md) until the next memory
    event.  An offline without a removal leaves /proc/iomem unchanged.

    Only where the architecture says so (``Arch.offlined_ram_stays_in_place``):
    powerpc's handler cuts the range being offlined out of the header it rebuilds, so
    a reload there would only cost a load (with kexec-tools, one that leaves memory
    above ``linux,memory-limit`` out: docs/e2e.md, the ppc64le ``hotplug-remove``
    row).  An architecture kdumpd does not know is treated as x86 (one load too many
    rather than a PT_LOAD over removed memory).
    """

    def __init__(self) -> None:
        self._last: tuple[MemRange, ...] | None = None  # System RAM at the last check

    def check(self, topology: Topology | None) -> str:
        """Why the kernel's in-place header still lists RAM that is gone, or ""."""
        if topology is None or not _offlined_ram_stays(topology.arch):
            return ""
        now = topology.system_ram
        before, self._last = self._last, now
        if before is None:
            return ""
        gone = subtract(((r.start, r.end) for r in before), ((r.start, r.end) for r in now))
        if not gone:
            return ""
        first = gone[0]
        return (
            f"System RAM {first.start:#x}-{first.end:#x}"
            + (f" and {len(gone) - 1} more range(s)" if len(gone) > 1 else "")
            + " was hot-removed, but the kernel rebuilt its elfcorehdr at MEM_OFFLINE"
            " while the range still existed"
        )


def _offlined_ram_stays(arch: str) -> bool:
    from kdumpd.arch import get_arch

    try:
        return get_arch(arch).offlined_ram_stays_in_place
    except UnsupportedError:
        return True
