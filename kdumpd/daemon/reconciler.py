"""The reconciler: the one owner of the daemon's state.

Events only bump counters and feed the debouncer.  When a burst is due, one worker
task re-reads the topology from the sysroot, compares ``Topology.image_key()`` with
what the loaded image describes, regenerates the :class:`CrashImage` in place,
applies it through the back-end, records ``state.json`` and then publishes to the
:class:`StateStore` (:mod:`kdumpd.daemon.projection`).  Then, if events arrived
while the load ran, their burst drives the next pass (so a sustained storm costs one
load per ``max_ms``, not one per pass);
only when none is pending is the topology re-read at once (a change without a
uevent) and re-applied, at most once.  Every later burst goes through the same
comparison, so no event is lost and nothing is applied twice for nothing.

Failed loads go through one fault policy for every back-end
(:mod:`kdumpd.daemon.faults`: EBUSY retries, the EPERM switch, restoring the last
good image, the retry timer).  Any other exception (e.g. ``OSError`` ENOSPC from a
back-end) is one error line, ``degraded`` or ``failed``, and a retry later: never
stuck in ``updating``/``loading``, and the daemon keeps running (also at start).

The operations D-Bus and SIGHUP ask for (Reload, Load, Unload, Rescan) are carried
out by :class:`kdumpd.daemon.control.Operations` through :meth:`Reconciler.exclusive`
and :meth:`Reconciler.reconcile`; a reload applies new settings with
:meth:`Reconciler.retune`, which returns the rollback.

kdumpd's own elfcorehdr model (:class:`CrashImage`) is needed only by backends that
load it (``Backend.consumes_image``).  For ``file``/``kernel`` the kernel builds its
own header, so a model that cannot be built (an unsupported architecture, an
odd ``/proc/iomem``, a header beyond any capacity) does not stop the load; it is
reported through ``last_error`` and ``stale``.  Even a topology that cannot be read
at all (``/proc/iomem`` with every address 0) does not: such a backend loads
"blind" at start, on Load/Reload and on every burst (an event is a change we cannot
see), and never retries the read on a timer.

An Unload on request makes every later burst, retry and rescan a no-op (the
topology is still tracked, the state stays ``unloaded``/stale) until Load or Reload;
it is recorded in ``state.json`` before it is published, so a restart in the same
boot stays unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kdumpd.core.errors import CapacityError, KdumpdError, UnsupportedError
from kdumpd.daemon.adoption import Adopter
from kdumpd.daemon.backends.base import ApplyResult, Backend, LoadRequest, Trigger
from kdumpd.daemon.backends.probe import carry_last_good
from kdumpd.daemon.faults import FaultPolicy, RetryTimer, state_after_failure
from kdumpd.daemon.loadlimit import LoadLimit
from kdumpd.daemon.projection import (
    Holding,
    Publisher,
    coverage,
    load_outcome,
    machine_now,
)
from kdumpd.daemon.skipped import SkippedUpdates, updated_in_place
from kdumpd.daemon.stalereason import StaleReasons
from kdumpd.daemon.state import ImageState, StateChanges, StateStore
from kdumpd.daemon.statefile import StateFile, key_digest
from kdumpd.events.debounce import AsyncDebouncer, Burst, Debouncer
from kdumpd.events.event import HotplugEvent
from kdumpd.events.kmsg import KernelLogEvent

if TYPE_CHECKING:
    from kdumpd.core.image import CrashImage
    from kdumpd.core.topology import Topology

log = logging.getLogger("kdumpd.daemon.reconciler")

ReadTopology = Callable[[Path], "Topology"]
ImageFactory = Callable[["Topology"], "CrashImage"]
Sleep = Callable[[float], Awaitable[None]]


def default_image_factory(max_cpus: int = 0, max_ranges: int = 0) -> ImageFactory:
    def make(topology: Topology) -> CrashImage:
        from kdumpd.arch import get_arch
        from kdumpd.core.image import CrashImage

        arch = get_arch(topology.arch)
        cap = arch.elfcorehdr_capacity(
            topology, max_cpus=max_cpus or None, max_ranges=max_ranges or None
        )
        return CrashImage.for_topology(arch, topology, cap)

    return make


def default_topology_reader(sysroot: Path) -> ReadTopology:
    """Reads ``sysroot`` through one :class:`kdumpd.system.topologyreader.TopologyReader`,
    which keeps the boot-constant kernel facts (kallsyms, kcore) between bursts."""
    from kdumpd.system import topologyreader

    reader = topologyreader.TopologyReader(sysroot)
    return lambda _sysroot: reader()


class Reconciler:
    """The worker and the reconcile pass; :class:`kdumpd.daemon.control.Operations`
    carries out what D-Bus and SIGHUP ask for on it."""

    def __init__(
        self,
        store: StateStore,
        backend: Backend,
        *,
        sysroot: str | Path = "/",
        state_dir: str | Path | None = None,
        read_topology: ReadTopology | None = None,
        image_factory: ImageFactory | None = None,
        quiet: float = 0.1,
        max_staleness: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        fallback_backend: Callable[[], Backend] | None = None,
        reconfigure: Callable[[], Callable[[], None] | None] | None = None,
        busy_retries: int = 6,
        busy_delay: float = 0.05,
        retry_interval: float = 5.0,
        max_passes: int = 8,
    ) -> None:
        self.store = store
        self.backend = backend
        self.sysroot = Path(sysroot)
        self.statefile = StateFile(state_dir) if state_dir is not None else None
        self.adopter = Adopter(self.statefile, self.sysroot)
        self.publisher = Publisher(store, self.statefile, self.sysroot)
        self.load_limit = LoadLimit(self.sysroot)
        self.read_topology = read_topology or default_topology_reader(self.sysroot)
        self.image_factory = image_factory or default_image_factory()
        self.clock = clock
        self.reconfigure = reconfigure
        self.max_passes = max_passes
        self.faults = FaultPolicy(
            sleep=sleep,
            fallback_backend=fallback_backend,
            busy_retries=busy_retries,
            busy_delay=busy_delay,
        )
        self.retry = RetryTimer(retry_interval, lambda: self.request(Trigger.RETRY))

        self.debouncer = Debouncer(quiet, max_staleness, clock)
        self._async_debouncer = AsyncDebouncer(self.debouncer, self._on_burst)
        self.image: CrashImage | None = None
        self.applied_digest: str | None = None
        self.generation = store.current.generation
        self.loads = store.current.loads
        self.load_failures = store.current.load_failures
        self.load_gaps_usec = store.current.load_gaps_usec
        self.regenerations = store.current.regenerations
        self.stale_reasons = StaleReasons(store)
        self.last_event_at: float | None = None
        self.last_applied_at: float | None = None
        self.last_good = False
        self._lock = asyncio.Lock()
        self._operation = ""
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._trigger = ""
        self._worker: asyncio.Task[None] | None = None
        self.unloaded_on_request = False
        self.loaded_inputs: dict[str, str] = {}  # Backend.input_digests() of the loaded image
        self.model_error = ""  # why kdumpd's own elfcorehdr model could not be built
        self._read_failed = False
        self._burst_first_at: float | None = None  # first event of the closed bursts
        self._pass_first_at: float | None = None  # ... that the running pass applies
        self.skipped = SkippedUpdates()  # kernel-log lines about skipped in-place updates

    # ---------------------------------------------------------------- events
    def event(self, ev: HotplugEvent) -> None:
        """Event sink for every source; O(1), no I/O."""
        first = self.debouncer.pending == 0
        self.last_event_at = self.clock()
        self._async_debouncer.event()
        if self._idle is not None:
            self._idle.clear()
        if first:
            self.store.update(pending_events=1, stale=True)
        elif self.debouncer.pending & 0x3FF == 0:  # keep STATUS/D-Bus roughly current
            self.store.update(pending_events=self.debouncer.pending)

    def kernel_log(self, ev: KernelLogEvent) -> None:
        """Event sink for the kernel-log watcher (policy: kdumpd.daemon.skipped)."""
        reason = self.skipped.consider(
            ev,
            backend=self.backend,
            events_received=self.debouncer.received,
            unloaded=self.unloaded_on_request,
        )
        if reason:
            self.store.update(stale=True, stale_reason=reason)
            self.request(Trigger.KERNEL_LOG)

    def _on_burst(self, burst: Burst) -> None:
        if self._burst_first_at is None or burst.first_at < self._burst_first_at:
            self._burst_first_at = burst.first_at  # LastUpdateDurationUSec starts here
        self.store.update(
            events_received=self.debouncer.received,
            events_coalesced=self.debouncer.coalesced,
            pending_events=0,
        )
        self.request(f"{burst.events} events ({burst.reason})")

    def request(self, trigger: str) -> None:
        """Ask the worker for a reconcile pass (coalesces with a pending request)."""
        self._trigger = trigger if not self._trigger else self._trigger
        if self._wake is not None:
            self._wake.set()
            if self._idle is not None:
                self._idle.clear()

    # --------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Adopt a recorded image or load the first one; then start the worker."""
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        if self._trigger:  # a burst closed before start (the event source runs first)
            self._wake.set()
        self.store.update(backend=self.backend.name, state=ImageState.LOADING)
        self._read_load_limit()
        async with self.exclusive("start"):
            try:
                adopted = self._adopt_recorded()
                await self.reconcile(
                    Trigger.ADOPT if adopted else Trigger.START, force_load=not adopted
                )
            except Exception as err:  # keep running, degraded, and retry
                self._unexpected(Trigger.START, err)
        self._worker = asyncio.create_task(self._run(), name="kdumpd-reconciler")
        if not self._wake.is_set() and self.debouncer.pending == 0:
            self._idle.set()

    async def stop(self) -> None:
        self._async_debouncer.close()
        self.retry.cancel()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def settle(self, *, flush: bool = False) -> None:
        """Wait until pending events are applied and the worker is idle (replay end).

        Without ``flush`` the debouncer's quiet period runs out as it would for
        live events; ``flush`` closes the pending burst at once."""
        if flush:
            self._async_debouncer.flush()
        assert self._idle is not None
        while self._wake is not None and (self._wake.is_set() or not self._idle.is_set()):
            await self._idle.wait()
            await asyncio.sleep(0)

    async def _run(self) -> None:
        assert self._wake is not None and self._idle is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            trigger, self._trigger = self._trigger or Trigger.REQUEST, ""
            async with self.exclusive("reconcile"):
                self._pass_first_at, self._burst_first_at = self._burst_first_at, None
                try:
                    await self.reconcile(trigger, force_load=self.skipped.take())
                except Exception as err:  # the daemon keeps running; state says why
                    self._unexpected(trigger, err)
                finally:
                    self._pass_first_at = None
            if not self._wake.is_set() and self.debouncer.pending == 0:
                self._idle.set()

    def _unexpected(self, trigger: str, err: Exception) -> None:
        """An exception no fault policy knows (e.g. OSError ENOSPC from a backend): never
        leave ``updating``/``loading`` behind; say degraded or failed and retry."""
        log.error(
            "%s: unexpected error: %s: %s",
            trigger,
            type(err).__name__,
            err,
            exc_info=log.isEnabledFor(logging.DEBUG),
            extra={"TRIGGER": trigger},
        )
        try:
            loaded = self.backend.is_loaded()
        except Exception:
            loaded = False
        self.applied_digest = None
        state = ImageState.UNLOADED if self.unloaded_on_request else state_after_failure(loaded)
        self.load_failures += 1
        self.store.update(
            state=state,
            last_error=f"{type(err).__name__}: {err}",
            stale=True,
            load_failures=self.load_failures,
        )
        if not self.unloaded_on_request:
            self.retry.schedule()

    # ---------------------------------------------------------------- adoption
    def _adopt_recorded(self) -> bool:
        adoption = self.adopter.decide(self.backend)
        if adoption.unloaded_on_request:
            self.unloaded_on_request = True
        rec = adoption.recorded
        if rec is None:
            return False
        self.generation = rec.generation
        self.loads = max(self.loads, rec.loads)
        self.applied_digest = rec.topology_digest
        self.last_good = True
        self.loaded_inputs = dict(rec.inputs)
        self.store.update(
            kernel_hotplug_support=rec.kernel_hotplug_support,
            last_update_usec=rec.last_update_usec,
        )
        # what the back-end knows the adopted image lacks (told again by adopt())
        self.stale_reasons.loaded(self.backend)
        return True

    # --------------------------------------------------------------- reconcile
    def _read(self) -> Topology | None:
        try:
            topology = self.read_topology(self.sysroot)
        except KdumpdError as err:
            log.error("cannot read the topology: %s", err)
            self._read_failed = True
            self.model_error = f"no elfcorehdr model: {err}"
            self.store.update(last_error=str(err), stale=True)
            if self.backend.consumes_image:
                self.retry.schedule()
            return None
        if self._read_failed:  # a transient read error is over: stop reporting it
            self._read_failed = False
            self.model_error = ""
        return topology

    def _current_key(self) -> str | None:
        """The topology's image-key digest now (LoadRequest.read_key); None if unreadable."""
        try:
            return key_digest(self.read_topology(self.sysroot).image_key())
        except KdumpdError:
            return None

    def _regenerate(self, topology: Topology) -> CrashImage:
        image = self.image
        if image is not None:
            try:
                image.regenerate(topology)
                return image
            except (CapacityError, UnsupportedError) as err:
                log.warning("rebuilding the crash image: %s", err)
        self.image = None  # never report a model of an older topology
        image = self.image_factory(topology)
        self.image = image
        return image

    def _model(self, topology: Topology) -> CrashImage | None:
        """kdumpd's model of the image for ``topology``; None (``model_error`` says
        why) when it cannot be built.  Raises only for backends that load it."""
        try:
            image = self._regenerate(topology)
        except Exception as err:
            if self.backend.consumes_image:
                raise
            text = f"no elfcorehdr model: {err}"
            if text != self.model_error:
                log.warning(
                    "%s; backend %s loads anyway (the kernel builds its own elfcorehdr), "
                    "the state reports the image as stale",
                    text,
                    self.backend.name,
                )
            self.model_error = text
            return None
        self.model_error = ""
        return image

    @property
    def _standing_error(self) -> str:
        """What ``LastError`` says while nothing fails: why there is no elfcorehdr
        model, or why ``state.json`` could not record the loaded image."""
        return self.model_error or self.publisher.error

    def _track_unloaded(self, topology: Topology, trigger: str) -> None:
        """Unloaded on request: follow the topology, load nothing."""
        changes = machine_now(topology)
        changes["state"] = ImageState.UNLOADED
        changes["stale"] = True
        self.store.update(**changes)
        if trigger != Trigger.RECHECK:
            log.info(
                "%s: the crash image was unloaded on request; not loading (Load or Reload "
                "loads it again)",
                trigger,
                extra={"TRIGGER": trigger},
            )

    async def reconcile(self, trigger: str, *, force_load: bool = False) -> bool:
        """Bring the applied image in line with the topology.  True when it matches (or
        nothing was to be done), False when the read, the model or the load failed.

        One pass per burst: after an apply, events pending in the debouncer drive the
        next pass (one load per ``max_ms`` in a storm).  Only when no event is pending is
        the topology re-read at once (a change without a uevent), and re-applied at
        most once."""
        rechecked = False
        for _ in range(self.max_passes):
            t0 = time.monotonic_ns()
            topology = self._read()
            if topology is None:
                if self.unloaded_on_request:
                    self.store.update(state=ImageState.UNLOADED, stale=True)
                    return True
                if trigger == Trigger.RECHECK:  # the next burst or retry loads; no blind load now
                    self.store.update(stale=True)
                    return True
                if not self.backend.consumes_image:
                    return await self._load_blind(trigger, force_load, t0)
                state = state_after_failure(self.backend.is_loaded())
                if self.store.current.state in (ImageState.LOADING, ImageState.UPDATING):
                    self.store.update(state=state)
                return False
            if self.unloaded_on_request:
                self._track_unloaded(topology, trigger)
                return True
            digest = key_digest(topology.image_key())
            if trigger == Trigger.ADOPT and digest != self.applied_digest:
                # The adopted image describes the machine as it was recorded; it
                # changed while no daemon ran.  This pass loads: say so, and do not
                # call that load an adoption.
                log.info(
                    "the adopted generation %d describes an earlier topology: loading",
                    self.generation,
                    extra={"GENERATION": self.generation},
                )
                trigger = Trigger.ADOPT_CHANGED
            if digest == self.applied_digest and not force_load:
                if self.image is None:  # adopted or model-less: (re)build the model
                    try:
                        self._model(topology)
                    except Exception as err:
                        log.error("cannot build the crash image model: %s", err)
                        self.model_error = f"no elfcorehdr model: {err}"
                    self._publish(topology, trigger, None, t0)
                elif trigger != Trigger.RECHECK:
                    log.info(
                        "%s: topology unchanged, generation %d stays",
                        trigger,
                        self.generation,
                        extra={"TRIGGER": trigger},
                    )
                cur = self.store.current
                if self.debouncer.pending == 0 and (
                    cur.last_error != self._standing_error or (self.image is not None and cur.stale)
                ):
                    # a successful read clears a transient read error
                    self.store.update(
                        last_error=self._standing_error,
                        stale=self.image is None if cur.stale else cur.stale,
                    )
                return True
            try:
                image = self._model(topology)
            except Exception as err:  # e.g. an unsupported arch, a header beyond any capacity
                if not isinstance(err, KdumpdError):
                    log.exception("building the crash image failed")
                log.error("cannot build the crash image: %s", err)
                state = state_after_failure(self.last_good)
                changes = machine_now(topology)
                changes["state"] = state
                changes["last_error"] = str(err)
                changes["stale"] = True
                self.store.update(**changes)
                self.retry.schedule()
                return False
            self.regenerations += 1
            request = self._request(image, topology, trigger, force_load)
            self.store.update(
                state=ImageState.UPDATING if self.last_good else ImageState.LOADING,
                regenerations=self.regenerations,
            )
            result = await self._apply(request)
            if result is None:
                self.applied_digest = None
                return False
            self.generation = request.generation
            self.applied_digest = digest
            self.last_good = True
            self.retry.cancel()
            self._publish(topology, trigger, result, t0)
            if self.debouncer.pending > 0 or rechecked:
                return True  # the pending burst drives the next pass
            force_load = False
            trigger = Trigger.RECHECK
            rechecked = True
        return True

    async def _load_blind(self, trigger: str, force_load: bool, t0: int) -> bool:
        """No topology, and a backend that does not need it: load anyway (the kernel
        builds its own elfcorehdr), and say that the state cannot be verified."""
        self.image = None
        if self.unloaded_on_request:
            self.store.update(state=ImageState.UNLOADED, stale=True)
            return True
        if trigger == Trigger.ADOPT:  # our image is loaded; nothing to compare it with
            changes = StateChanges(
                state=ImageState.LOADED, backend=self.backend.name, last_error=self._standing_error
            )
            changes.update(coverage(None, None))
            self.store.update(**changes)
            return True
        request = self._request(None, None, trigger, force_load)
        self.store.update(state=ImageState.UPDATING if self.last_good else ImageState.LOADING)
        result = await self._apply(request)
        self.applied_digest = None  # unknown: the next burst applies again
        if result is None:
            return False
        self.generation = request.generation
        self.last_good = True
        self.retry.cancel()
        changes = self._applied(trigger)
        changes.update(coverage(None, None))
        changes.update(load_outcome(result, self._duration_usec(t0)))
        self.publisher.publish(self._holding(), changes)
        self.last_applied_at = self.clock()
        log.warning(
            "generation %d applied (%s) without a topology: %s",
            self.generation,
            trigger,
            result.detail,
            extra={"GENERATION": self.generation, "TRIGGER": trigger},
        )
        self.store.image_updated(self.generation, trigger)
        return True

    def _duration_usec(self, t0: int) -> int:
        """From the first event of the burst(s) this pass applies (as documented for
        LastUpdateDurationUSec), else from the start of the pass (start, Reload, ...)."""
        first, self._pass_first_at = self._pass_first_at, None
        if first is not None:
            return max(0, round((self.clock() - first) * 1_000_000))
        return (time.monotonic_ns() - t0) // 1000

    async def _apply(self, request: LoadRequest) -> ApplyResult | None:
        result: ApplyResult | None = None
        with self.skipped.own_load() as held:
            try:
                result = await self._apply_with_policy(request)
            finally:
                self._read_load_limit()  # failed attempts count too
        if result is not None and not result.load_count and held:
            # in place after all: no load covers what the kernel said meanwhile
            self.skipped.uncovered(held)
            for ev in held:
                self.kernel_log(ev)
        if result is not None and result.load_count:
            self.skipped.loaded(self.debouncer.received)
            self.stale_reasons.loaded(self.backend)
        elif result is not None:
            self.stale_reasons.applied_in_place(self.backend)
        return result

    async def _apply_with_policy(self, request: LoadRequest) -> ApplyResult | None:
        outcome = await self.faults.apply(self.backend, request, self._switch_backend)
        if isinstance(outcome, str):
            return await self._degrade(request, outcome)
        if outcome.loaded:
            self.loads += outcome.load_count
            self.load_gaps_usec += outcome.gap_usec
            self.loaded_inputs = self.backend.input_digests()
        return outcome

    def _switch_backend(self, backend: Backend, why: str = "") -> None:
        self.backend = backend
        self.store.update(backend=backend.name, backend_reason=why)

    async def _degrade(self, request: LoadRequest, error: str) -> ApplyResult | None:
        """The load failed: put the last good image back, say so, retry later."""
        log.error(
            "applying generation %d failed: %s",
            request.generation,
            error,
            extra={"GENERATION": request.generation, "TRIGGER": request.trigger},
        )
        restored = await self.faults.restore(
            self.backend, request, last_good=self.last_good, error=error
        )
        self.load_failures += 1
        if restored.result is not None and restored.result.loaded:
            self.loads += restored.result.load_count
            self.load_gaps_usec += restored.result.gap_usec
            self.loaded_inputs = {"restored": "last good inputs"}
            self.stale_reasons.loaded(self.backend)  # what the restored image may lack
        changes = StateChanges(
            state=state_after_failure(restored.loaded),
            last_error=error,
            stale=True,
            loads=self.loads,
            load_failures=self.load_failures,
            load_gaps_usec=self.load_gaps_usec,
        )
        if request.topology is not None:  # the machine now, not what the image covers
            changes.update(machine_now(request.topology))
        self.store.update(**changes)
        self._save(loaded=restored.loaded)
        self.retry.schedule()
        return None

    def _holding(self) -> Holding:
        return Holding(
            generation=self.generation,
            backend=self.backend.name,
            topology_digest=self.applied_digest or "",
            loads=self.loads,
            inputs=self.loaded_inputs,
            unloaded_on_request=self.unloaded_on_request,
        )

    def _save(self, *, loaded: bool) -> None:
        self.publisher.record(self._holding(), loaded=loaded)

    def _applied(self, trigger: str) -> StateChanges:
        """The fields every applied (or re-confirmed) image publishes."""
        return StateChanges(
            state=ImageState.LOADED,
            backend=self.backend.name,
            generation=self.generation,
            last_trigger=trigger,
            regenerations=self.regenerations,
            loads=self.loads,
            load_gaps_usec=self.load_gaps_usec,
            events_received=self.debouncer.received,
            events_coalesced=self.debouncer.coalesced,
            pending_events=self.debouncer.pending,
            last_error=self._standing_error,
        )

    def _request(
        self,
        image: CrashImage | None,
        topology: Topology | None,
        trigger: str,
        force_load: bool,
    ) -> LoadRequest:
        return LoadRequest(
            image=image,
            topology=topology,
            generation=self.generation + 1,
            trigger=trigger,
            counters={
                "events_received": self.debouncer.received,
                "events_coalesced": self.debouncer.coalesced,
                "regenerations": self.regenerations,
                "loads": self.loads,
            },
            force_load=force_load,
            read_key=self._current_key,
        )

    def _publish(
        self, topology: Topology, trigger: str, result: ApplyResult | None, t0: int
    ) -> None:
        duration = self._duration_usec(t0)
        changes = self._applied(trigger)
        changes.update(coverage(topology, self.image))
        changes["stale"] = changes["stale"] or self.debouncer.pending > 0
        if result is not None:
            changes.update(load_outcome(result, duration))
        self.publisher.publish(self._holding(), changes)
        self.last_applied_at = self.clock()
        if result is not None:
            log.info(
                "generation %d applied (%s): %d CPUs, %d ranges, %s",
                self.generation,
                trigger,
                len(changes["covered_cpus"]),
                len(changes["covered_ranges"]),
                result.detail,
                extra={
                    "GENERATION": self.generation,
                    "TRIGGER": trigger,
                    "DURATION_USEC": duration,
                    "BACKEND": self.backend.name,
                },
            )
            self.store.image_updated(self.generation, trigger)

    # ------------------------------------------- for the operations (daemon/control.py)
    @contextlib.asynccontextmanager
    async def exclusive(self, operation: str) -> AsyncIterator[None]:
        """Hold the reconciler for ``operation`` (waits for a running pass)."""
        async with self._lock:
            self._operation = operation
            try:
                yield
            finally:
                self._operation = ""

    @property
    def running(self) -> str:
        """The operation holding the reconciler; "" when it is idle."""
        return (self._operation or "an operation") if self._lock.locked() else ""

    @property
    def operation(self) -> str:
        return self._operation

    def failure(self, operation: str) -> str:
        """One line saying why ``operation`` failed, from the published state."""
        cur = self.store.current
        return f"{operation} failed ({cur.state}): {cur.last_error or 'see the journal'}"

    def holds_current_image(self) -> bool:
        """A crash image is loaded and it is the one this reconciler applied."""
        return (
            not self.unloaded_on_request
            and self.backend.is_loaded()
            and self.applied_digest is not None
        )

    def republish_backend(self) -> None:
        """After a reload was rolled back: publish and record the back-end in use."""
        self.store.update(backend=self.backend.name)
        self._save(loaded=self.backend.is_loaded())

    def _read_load_limit(self) -> None:
        """Publish what ``kexec_load_limit_panic`` leaves (kdumpd.daemon.loadlimit)."""
        left = self.load_limit.refresh(
            per_burst=not updated_in_place(self.backend), backend=self.backend.name
        )
        self.store.update(load_limit_panic=left)

    def unloaded(self) -> None:
        """The back-end unloaded the image on request: load nothing until asked."""
        self._read_load_limit()  # an unload counts against the limit as well
        self.applied_digest = None
        self.last_good = False
        self.unloaded_on_request = True
        self.retry.cancel()
        self._save(loaded=False)  # record first: a restart must stay unloaded
        self.stale_reasons.unloaded()  # no image, no reason about what it lacks
        self.store.update(state=ImageState.UNLOADED, stale=True)
        log.warning("crash image unloaded on request")

    def retune(
        self,
        *,
        quiet: float,
        max_staleness: float,
        image_factory: ImageFactory | None = None,
        backend: Backend | None = None,
    ) -> Callable[[], None]:
        """Apply reloaded settings: the debounce times, a new elfcorehdr sizing
        (``image_factory``; the model is rebuilt next pass) and a new back-end.
        Returns the rollback that restores the previous ones."""
        old_backend = self.backend
        old_factory, old_image = self.image_factory, self.image
        old_quiet, old_max = self.debouncer.quiet, self.debouncer.max_staleness

        def rollback() -> None:
            self.debouncer.quiet, self.debouncer.max_staleness = old_quiet, old_max
            self.image_factory, self.image = old_factory, old_image
            if self.backend is not old_backend:
                carry_last_good(self.backend, old_backend)
                self.backend = old_backend
                self.store.update(backend=old_backend.name)

        self.debouncer.quiet, self.debouncer.max_staleness = quiet, max_staleness
        if image_factory is not None:
            self.image_factory, self.image = image_factory, None
        if backend is not None and backend is not self.backend:
            carry_last_good(self.backend, backend)
            self.backend = backend
            self.store.update(backend=backend.name)
        return rollback
