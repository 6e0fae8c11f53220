"""Prometheus metrics in a text file, for node_exporter's textfile collector.

With ``metrics_file`` set (``--metrics-file``; usually a ``*.prom`` file in the
directory node_exporter's ``--collector.textfile.directory`` names, e.g.
``/var/lib/prometheus/node-exporter/kdumpd.prom``), :class:`MetricsWriter` observes the
:class:`~kdumpd.daemon.state.StateStore` -- an edge like D-Bus and sd_notify; it drives
nothing -- and rewrites the file:

* on every state change, but at most once per ``min_interval`` (1 s): the changes of a
  storm between two writes fold into one trailing write, so the last state always lands;
* every ``refresh`` seconds while the daemon has no crash image, so
  ``kdumpd_no_crash_image_seconds_total`` keeps counting in the file;
* once more when the daemon stops, if anything changed since the last write.

The text is prometheus_client's exposition (``generate_latest``) of a private registry,
written as its ``write_to_textfile`` does -- a temporary file in the same directory,
renamed over the old one, so a reader sees the old file or the new one, never half of
one -- but mode 0644 whatever the umask (the unit runs with ``UMask=0077``, and
node_exporter does not run as root).  A failed write is one
log line (again only after :data:`COMPLAIN_EVERY` seconds while it keeps failing, and one
when it works again); the daemon carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from kdumpd.daemon.state import DaemonState, ImageState, StateStore
from kdumpd.system import kexecsysfs
from kdumpd.system.sysroot import Sysroot

log = logging.getLogger("kdumpd.interfaces.metrics")

#: States in which the daemon holds no crash image: loading (no image yet), failed
#: (the load failed and nothing could be restored), unloaded.
NO_IMAGE_STATES = frozenset({ImageState.LOADING, ImageState.FAILED, ImageState.UNLOADED})
#: While writing keeps failing, say so again after this many seconds.
COMPLAIN_EVERY = 600.0

Writer = Callable[[str, CollectorRegistry], None]


def write_textfile(path: str, registry: CollectorRegistry) -> None:
    """Replace ``path`` with the text exposition of ``registry`` in one rename, from a
    hidden temporary file beside it (node_exporter reads only ``*.prom``), mode 0644."""
    data = generate_latest(registry)
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def metric_families(
    state: DaemonState,
    *,
    crash_loaded: bool,
    load_limit_panic: int | None,
    no_image_state_seconds: float,
) -> list[Metric]:
    """The metrics for ``state`` plus what the kernel says (``crash_loaded``: its
    ``kexec_crash_loaded``; ``load_limit_panic``: ``kexec_load_limit_panic``, None when
    the kernel has no such sysctl) and the time the daemon spent in
    :data:`NO_IMAGE_STATES` (seconds)."""
    out: list[Metric] = []

    def gauge(name: str, doc: str, value: float) -> None:
        out.append(GaugeMetricFamily(name, doc, value=value))

    def counter(name: str, doc: str, value: float) -> None:
        out.append(CounterMetricFamily(name, doc, value=value))

    gauge(
        "kdumpd_crash_image_loaded",
        "1 when the kernel has a crash image loaded (its kexec_crash_loaded), else 0",
        1 if crash_loaded else 0,
    )
    states = GaugeMetricFamily(
        "kdumpd_state", "The daemon's state: 1 for the current one", labels=["state"]
    )
    for s in ImageState:
        states.add_metric([str(s)], 1 if state.state is s else 0)
    out.append(states)
    reason = state.stale_reason or ("topology" if state.stale else "")
    stale = GaugeMetricFamily(
        "kdumpd_stale",
        "1 when the loaded image may not describe the machine as it is now; reason "
        '"topology" (CPUs or memory changed or are unknown) or why the kernel\'s copy '
        "may be outdated",
        labels=["reason"],
    )
    stale.add_metric([reason], 1 if state.stale else 0)
    out.append(stale)
    gauge("kdumpd_generation", "Generation of the applied crash image", state.generation)
    counter("kdumpd_loads", "Load syscalls made (with restores)", state.loads)
    counter(
        "kdumpd_load_failures",
        "Passes whose load failed (after the fault policy's retries)",
        state.load_failures,
    )
    counter("kdumpd_events", "Hotplug events received", state.events_received)
    counter(
        "kdumpd_events_coalesced",
        "Hotplug events folded into a burst with others",
        state.events_coalesced,
    )
    counter("kdumpd_regenerations", "Crash image models regenerated", state.regenerations)
    gauge("kdumpd_pending_events", "Events waiting for the next burst", state.pending_events)
    gauge(
        "kdumpd_last_update_timestamp_seconds",
        "When the last image was applied (Unix time; 0 = never)",
        state.last_update_usec / 1e6,
    )
    gauge(
        "kdumpd_last_update_duration_seconds",
        "From the first event of the last burst to its image being applied",
        state.last_update_duration_usec / 1e6,
    )
    gauge(
        "kdumpd_last_load_gap_seconds",
        "How long the kernel had no crash image during the last load",
        state.last_load_gap_usec / 1e6,
    )
    counter(
        "kdumpd_load_gap_seconds",
        "Time with no crash image inside the daemon's loads, summed",
        state.load_gaps_usec / 1e6,
    )
    counter(
        "kdumpd_no_crash_image_seconds",
        "Time the daemon had no crash image, as it measures it: the gaps inside its "
        "loads plus the time spent loading, failed or unloaded",
        state.load_gaps_usec / 1e6 + no_image_state_seconds,
    )
    gauge(
        "kdumpd_kernel_hotplug_support",
        "1 when the kernel updates the loaded image on hotplug itself",
        1 if state.kernel_hotplug_support else 0,
    )
    gauge(
        "kdumpd_elfcorehdr_used_bytes",
        "Bytes of the elfcorehdr in use",
        state.elfcorehdr_used,
    )
    gauge(
        "kdumpd_elfcorehdr_capacity_bytes",
        "Bytes reserved for the elfcorehdr",
        state.elfcorehdr_capacity,
    )
    gauge(
        "kdumpd_crash_kernel_size_bytes",
        "Size of the crash kernel reservation",
        state.crash_kernel_size,
    )
    out.append(
        InfoMetricFamily(
            "kdumpd_backend",
            "The back-end that loads crash images",
            value={"backend": state.backend},
        )
    )
    if load_limit_panic is not None:
        gauge(
            "kdumpd_kexec_load_limit_panic",
            "Crash image loads the kernel still accepts this boot (its "
            "kexec_load_limit_panic); -1 = no limit",
            load_limit_panic,
        )
    return out


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class NoImageClock:
    """Seconds spent in :data:`NO_IMAGE_STATES`, on a monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.closed = 0.0
        self.since: float | None = None

    def observe(self, state: ImageState) -> None:
        now = self.clock()
        if state in NO_IMAGE_STATES:
            if self.since is None:
                self.since = now
        elif self.since is not None:
            self.closed += max(0.0, now - self.since)
            self.since = None

    @property
    def missing(self) -> bool:
        return self.since is not None

    def seconds(self) -> float:
        if self.since is None:
            return self.closed
        return self.closed + max(0.0, self.clock() - self.since)


class MetricsWriter:
    """Keeps ``path`` in step with the store (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        store: StateStore,
        sysroot: str | Path | Sysroot = "/",
        *,
        min_interval: float = 1.0,
        refresh: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        write: Writer = write_textfile,
    ) -> None:
        self.path = Path(path)
        self.store = store
        self.sysroot = Sysroot.of(sysroot)
        self.min_interval = min_interval
        self.refresh = refresh
        self.clock = clock
        self._write = write
        self.no_image = NoImageClock(clock)
        self.writes = 0
        self.failures = 0
        # clock() of the latest successful writes (tests and the benchmark)
        self.write_times: deque[float] = deque(maxlen=4096)
        self._last_write: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0  # clock() when the scheduled write runs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._failing = False
        self._complained_at: float | None = None
        self._stopped = False
        self._dirty = False  # the store changed after the last write

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Subscribe to the store and write the file once now."""
        self._loop = loop or asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.no_image.observe(self.store.current.state)
        self.store.subscribe(self._on_state)
        if not self.path.name.endswith(".prom"):
            log.warning(
                "metrics file %s: node_exporter's textfile collector reads *.prom files only",
                self.path,
            )
        self._fire()

    def stop(self) -> None:
        """Write what changed since the last write (the daemon is exiting: this one
        write may come sooner than ``min_interval``); no write after this."""
        if self._stopped:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._dirty or self.no_image.missing:
            self.write_now()
        self._stopped = True

    # -- scheduling ------------------------------------------------------------

    def _on_state(self, state: DaemonState, _changed: Mapping[str, Any]) -> None:
        self.no_image.observe(state.state)
        self._dirty = True
        loop = self._loop
        if loop is None or loop.is_closed() or self._stopped:
            return
        if threading.get_ident() == self._loop_thread:
            self._schedule(0.0)
        else:
            loop.call_soon_threadsafe(self._schedule, 0.0)

    def _schedule(self, delay: float) -> None:
        """A write ``delay`` s from now, but not within ``min_interval`` of the last
        one.  A write already scheduled as early takes this change along; a later one
        (a refresh) is brought forward."""
        if self._loop is None or self._stopped:
            return
        now = self.clock()
        due = now + delay
        if self._last_write is not None:
            due = max(due, self._last_write + self.min_interval)
        if self._handle is not None:
            if self._due <= due:
                return
            self._handle.cancel()
        self._due = due
        self._handle = self._loop.call_later(max(0.0, due - now), self._fire)

    def _fire(self) -> None:
        self._handle = None
        if self._stopped:
            return
        if self._last_write is not None and self.clock() < self._last_write + self.min_interval:
            self._schedule(0.0)  # the loop woke a little early: never two writes in 1 s
            return
        self.write_now()
        if self.no_image.missing:
            self._schedule(self.refresh)

    # -- writing ---------------------------------------------------------------

    def families(self) -> list[Metric]:
        """What the file holds now (reads the kernel's two values afresh)."""
        return metric_families(
            self.store.current,
            crash_loaded=kexecsysfs.crash_image_loaded(self.sysroot),
            load_limit_panic=kexecsysfs.read_load_limit_panic(self.sysroot),
            no_image_state_seconds=self.no_image.seconds(),
        )

    def write_now(self) -> bool:
        """Write the file at once; False (and a log line, rate-limited) on failure."""
        now = self.clock()
        self._last_write = now  # a failed attempt counts too: no retry storm
        self._dirty = False
        try:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Families(self.families()))
            self._write(str(self.path), registry)
        except Exception as err:  # OSError mostly; never let a metrics bug stop the daemon
            self.failures += 1
            if (
                not self._failing
                or self._complained_at is None
                or now - self._complained_at >= COMPLAIN_EVERY
            ):
                why = err.strerror if isinstance(err, OSError) and err.strerror else err
                log.warning(
                    "cannot write the metrics file %s: %s (%d failed writes so far)",
                    self.path,
                    why,
                    self.failures,
                )
                self._complained_at = now
            self._failing = True
            return False
        if self._failing:
            log.info("metrics file %s written again", self.path)
            self._failing = False
            self._complained_at = None
        self.writes += 1
        self.write_times.append(now)
        return True
