"""``kdumpd run``: every part on one asyncio loop.

Event sources (udev netlink or a replay file) → the reconciler's debouncer → the
reconciler (topology → CrashImage → backend) → the StateStore, observed by
sd_notify, state.json, the metrics file (``metrics_file``) and (if present and enabled)
D-Bus.  SIGTERM/SIGINT stop.

The udev source starts *before* the first topology read, so a hotplug event during
start-up is debounced into a burst that runs after the first load, never lost.

Reload: one daemon-owned hook, :meth:`Daemon.reconfigure`, re-reads the
configuration (file, environment, command line), rebuilds the back-end when its
inputs changed and is run by :meth:`Operations.reload` before the fresh load — so
D-Bus ``Reload`` (``kdumpctl reload``) and SIGHUP do the same thing.  A bad
configuration is one error line; the running configuration and image stay.  SIGHUP
sends ``RELOADING=1`` and always ``READY=1`` afterwards.

Replay (``--replay FILE``) writes the file's ``files`` below the sysroot, so it is
refused on ``/`` and always runs the dry-run back-end (no kexec syscalls).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kdumpd.config import Settings, load_settings
from kdumpd.core.errors import InputError, KdumpdError
from kdumpd.daemon.backends.base import Backend, BackendName
from kdumpd.daemon.backends.probe import make_backend, probe_backend
from kdumpd.daemon.control import Operations
from kdumpd.daemon.reconciler import Reconciler, default_image_factory
from kdumpd.daemon.state import StateStore
from kdumpd.daemon.statelock import StateDirLock
from kdumpd.events.event import EventSink
from kdumpd.events.kmsg import KmsgWatcher
from kdumpd.events.replay import Replayer, ReplayStats
from kdumpd.interfaces.notify import Notifier
from kdumpd.system import malloc
from kdumpd.system.kexec import KexecSyscalls
from kdumpd.system.kexecsysfs import crash_hotplug_file

if TYPE_CHECKING:
    from kdumpd.interfaces.metrics import MetricsWriter

log = logging.getLogger("kdumpd.service")


@dataclass(slots=True)
class RunResult:
    replay: ReplayStats | None
    last_event_to_applied: float | None  # seconds, replay only
    state: dict[str, Any]


class EventSource(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


def udev_source(sink: EventSink, settings: Settings) -> EventSource:
    from kdumpd.events.udev import UdevSource

    return UdevSource(sink, source=settings.event_source)


def check_replay(settings: Settings) -> None:
    """Replay writes below the sysroot and must never touch the live system."""
    if Path(settings.sysroot).resolve() == Path("/"):
        raise InputError(
            str(settings.sysroot),
            "refusing to replay onto the live system (replay writes its 'files' below the "
            "sysroot); pass --sysroot DIR with a copy",
        )
    if settings.backend not in ("auto", "dry-run"):
        raise InputError(
            "backend",
            f"replay runs the dry-run backend only (a fixture must not reach kexec), "
            f"not {settings.backend}",
        )


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        config_path: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        replay: str | Path | None = None,
        speed: float = 1.0,
        exit_after_replay: bool = False,
        syscalls_factory: Callable[[], KexecSyscalls] | None = None,
        env: Mapping[str, str] | None = None,
        progress: Callable[[int], None] | None = None,
        store: StateStore | None = None,
        source_factory: Callable[[EventSink, Settings], EventSource] | None = None,
        load_config: Callable[[], Settings] | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self.replay = replay
        self.speed = speed
        self.exit_after_replay = exit_after_replay
        self.syscalls_factory = syscalls_factory
        self.env = env
        self.progress = progress
        self.store = store or StateStore()
        self.source_factory = source_factory or udev_source
        self.load_config = load_config or (lambda: load_settings(self.config_path, self.overrides))
        self.reconciler: Reconciler | None = None
        self.control: Operations | None = None
        self.notifier: Notifier | None = None
        self.metrics: MetricsWriter | None = None
        self._stop: asyncio.Event | None = None
        self._dbus: Any = None
        self._source: EventSource | None = None
        self._kernel_log: KmsgWatcher | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _backend_name(self, s: Settings) -> tuple[str, str]:
        if self.replay is not None:
            return BackendName.DRY_RUN, "replay"
        if s.backend != "auto":
            return s.backend, "configured"
        name, why = probe_backend(s.sysroot)
        if name == BackendName.DRY_RUN and Path(s.sysroot).resolve() == Path("/"):
            log.warning("no kexec support: running in dry-run, nothing is loaded (%s)", why)
        return name, why

    def _backend(self) -> Backend:
        s = self.settings
        name, why = self._backend_name(s)
        log.info("backend %s (%s)", name, why, extra={"BACKEND": name})
        self.store.update(backend_reason=why)
        return make_backend(name, s, self.syscalls_factory)

    def _fallback(self) -> Backend:
        return make_backend(BackendName.FILE, self.settings, self.syscalls_factory)

    async def run(self) -> RunResult:
        s = self.settings
        if self.replay is not None:
            check_replay(s)
        with StateDirLock(s.state_dir):  # one daemon per state directory
            return await self._run()

    async def _run(self) -> RunResult:
        loop = asyncio.get_running_loop()
        s = self.settings
        self._stop = asyncio.Event()
        backend = self._backend()
        rec = Reconciler(
            self.store,
            backend,
            sysroot=s.sysroot,
            state_dir=s.state_dir,
            image_factory=default_image_factory(s.elfcorehdr.max_cpus, s.elfcorehdr.max_ranges),
            quiet=s.debounce.quiet_ms / 1000,
            max_staleness=s.debounce.max_ms / 1000,
            fallback_backend=self._fallback,
            reconfigure=self.reconfigure,
        )
        self.reconciler = rec
        control = self.control = Operations(rec)
        self.notifier = Notifier(self.store, self.env)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.on_sighup)
        replay_stats: ReplayStats | None = None
        gap: float | None = None
        try:
            self._start_metrics()  # before the first load: the file says "loading"
            if self.replay is None and self._hears_this_machine():
                self._start_source(rec)  # before the first read: no event is lost
                self._start_kernel_log(rec)  # before the first load, likewise
            # D-Bus before the first load: READY=1 (sent on the first loaded state)
            # must find the name owned, so `kdumpctl status` right after start works
            await self._start_dbus()
            await rec.start()
            self.notifier.mark_ready()
            malloc.trim()  # start-up's freed heap back to the kernel (idle RSS)
            self.notifier.start_watchdog(loop)
            if self.replay is not None:
                replayer = Replayer(s.sysroot, rec.event, speed=self.speed, progress=self.progress)
                replay_stats = await replayer.run_file(self.replay)
                last_event = rec.last_event_at
                await rec.settle()
                applied = rec.last_applied_at
                if last_event is not None and applied is not None and applied >= last_event:
                    gap = applied - last_event  # None: nothing was applied after the events
                if self.exit_after_replay:
                    return RunResult(replay_stats, gap, await control.report())
            await self._stop.wait()
            return RunResult(replay_stats, gap, await control.report())
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if self._source is not None:
                self._source.stop()
            if self._kernel_log is not None:
                self._kernel_log.stop()
            if self._dbus is not None:
                try:
                    await self._dbus.stop()
                except Exception as err:
                    log.warning("D-Bus shutdown: %s", err)
            self.notifier.stopping()
            for task in list(self._tasks):
                task.cancel()
            await rec.stop()
            if self.metrics is not None:
                self.metrics.stop()  # the final state, after the last pass

    def _hears_this_machine(self) -> bool:
        """The default (udev) event source reports the *running* kernel's hotplug;
        for a captured tree (``--sysroot DIR``) those events describe another
        machine, so the daemon then has no event source: replay, rescan (D-Bus) or
        SIGHUP drive it."""
        if self.source_factory is not udev_source:
            return True  # an injected source belongs to the caller's sysroot
        if Path(self.settings.sysroot).resolve() == Path("/"):
            return True
        log.info(
            "sysroot %s is not the running system: not listening to this machine's "
            "uevents (use --replay, or Rescan over D-Bus, or SIGHUP)",
            self.settings.sysroot,
        )
        return False

    def _start_source(self, rec: Reconciler) -> None:
        src = self.source_factory(rec.event, self.settings)
        try:
            src.start()
        except (KdumpdError, OSError) as err:
            log.error("no hotplug events: %s (rescan via D-Bus or SIGHUP still works)", err)
            return
        self._source = src

    def _start_metrics(self) -> None:
        """The Prometheus text file (``metrics_file``), when configured."""
        path = self.settings.metrics_file
        if path is None:
            return
        from kdumpd.interfaces.metrics import MetricsWriter

        self.metrics = MetricsWriter(path, self.store, self.settings.sysroot)
        self.metrics.start()
        log.info("metrics in %s", path)

    def _start_kernel_log(self, rec: Reconciler) -> None:
        """Watch the kernel log for skipped crash-hotplug updates, on kernels that make
        them (CONFIG_CRASH_HOTPLUG); elsewhere the line cannot appear."""
        if crash_hotplug_file(self.settings.sysroot) is None:
            return
        watcher = KmsgWatcher(rec.kernel_log, sysroot=self.settings.sysroot)
        if watcher.start():
            rec.skipped.drain = watcher.drain
            self._kernel_log = watcher

    async def _start_dbus(self) -> None:
        if not self.settings.dbus or self.control is None:
            return
        if importlib.util.find_spec("kdumpd.interfaces.dbus") is None:
            return
        from kdumpd.interfaces import dbus

        try:
            self._dbus = await dbus.serve(None, self.store, self.control)
        except (KdumpdError, OSError) as err:
            log.warning("D-Bus interface not available: %s", err)

    # ------------------------------------------------------------------ reload
    def reconfigure(self) -> Callable[[], None] | None:
        """The reload hook (run by :meth:`Operations.reload` under its lock): re-read the
        configuration and apply it to the running reconciler.  Raises InputError (and
        changes nothing) when the new configuration or back-end inputs are bad.  Returns
        a rollback that restores the previous configuration and back-end: the reconciler
        calls it when the fresh load with the new configuration fails."""
        rec = self.reconciler
        new = self.load_config()
        old = self.settings
        for key in ("sysroot", "state_dir", "event_source", "dbus", "metrics_file"):
            if getattr(new, key) != getattr(old, key):
                log.warning("reload: %s changed; it takes effect at the next restart", key)
        if rec is None:
            self.settings = new
            return None
        backend = rec.backend
        why = self.store.current.backend_reason
        # file/kernel re-resolve kernel, initrd and cmdline every time (a kdump initrd
        # may have appeared, /proc/cmdline or kdump-utils' files may have changed)
        if self.replay is None and (
            new.backend != old.backend or backend.name != BackendName.DRY_RUN
        ):
            name = backend.name if new.backend == old.backend == "auto" else None
            if name is None:
                name, why = self._backend_name(new)
                log.info("reload: backend %s (%s)", name, why, extra={"BACKEND": name})
                self.store.update(backend_reason=why)
            if name != BackendName.DRY_RUN or backend.name != BackendName.DRY_RUN:
                backend = make_backend(name, new, self.syscalls_factory)
        # everything that can fail has run: commit (undone by the rollback)
        undo = rec.retune(
            quiet=new.debounce.quiet_ms / 1000,
            max_staleness=new.debounce.max_ms / 1000,
            image_factory=(
                default_image_factory(new.elfcorehdr.max_cpus, new.elfcorehdr.max_ranges)
                if new.elfcorehdr != old.elfcorehdr
                else None
            ),
            backend=backend,
        )
        self.settings = new
        old_reason = self.store.current.backend_reason
        self.store.update(backend_reason=why)

        def rollback() -> None:
            self.settings = old
            undo()
            self.store.update(backend_reason=old_reason)

        log.info("configuration re-read; loading a fresh crash image")
        return rollback

    def on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self._sighup(), name="kdumpd-sighup")
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)

    async def _sighup(self) -> None:
        if self.notifier is not None:
            self.notifier.reloading()
        try:
            if self.control is not None:
                await self.control.reload()
        except asyncio.CancelledError:  # shutting down: no READY=1 after STOPPING=1
            raise
        except KdumpdError as err:
            log.error("SIGHUP: %s (keeping the running configuration)", err)
        except Exception:
            log.exception("SIGHUP: reload failed")
        if self.notifier is not None:
            self.notifier.reloaded()
