"""``kdumpd run``: every part on one asyncio loop.

Event sources (udev netlink or a replay file) → the reconciler's debouncer → the
reconciler (topology → CrashImage → backend) → the StateStore, observed by
sd_notify, state.json and (if present and enabled) D-Bus.  SIGTERM/SIGINT stop,
SIGHUP re-reads the configuration (keeping the running one when the new one is
bad) and reloads the image.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdumpd.config import Settings, load_settings
from kdumpd.core.errors import KdumpdError
from kdumpd.daemon.backends.base import Backend
from kdumpd.daemon.backends.probe import make_backend, probe_backend
from kdumpd.daemon.reconciler import Reconciler, default_image_factory
from kdumpd.daemon.state import ImageState, StateStore
from kdumpd.events.replay import Replayer, ReplayStats
from kdumpd.interfaces.notify import Notifier
from kdumpd.system.kexec import KexecSyscalls

log = logging.getLogger("kdumpd.daemon")


@dataclass(slots=True)
class RunResult:
    replay: ReplayStats | None
    last_event_to_applied: float | None  # seconds, replay only
    state: dict[str, Any]


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
        self.reconciler: Reconciler | None = None
        self.notifier: Notifier | None = None
        self._stop: asyncio.Event | None = None
        self._dbus: Any = None
        self._udev: Any = None

    def _backend(self) -> Backend:
        s = self.settings
        name: str = s.backend
        if name == "auto":
            name, why = probe_backend(s.sysroot)
        else:
            why = "configured"
        log.info("backend %s (%s)", name, why, extra={"BACKEND": name})
        return make_backend(name, s, self.syscalls_factory)

    def _fallback(self) -> Backend:
        return make_backend("file", self.settings, self.syscalls_factory)

    async def run(self) -> RunResult:
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
        )
        self.reconciler = rec
        self.notifier = Notifier(self.store, self.env)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._sighup()))
        replay_stats: ReplayStats | None = None
        gap: float | None = None
        try:
            await rec.start()
            self.notifier.mark_ready()
            self.notifier.start_watchdog(loop)
            await self._start_dbus()
            if self.replay is not None:
                replayer = Replayer(s.sysroot, rec.event, speed=self.speed, progress=self.progress)
                replay_stats = await replayer.run_file(self.replay)
                last_event = rec.last_event_at
                await rec.settle()
                if last_event is not None and rec.last_applied_at is not None:
                    gap = max(0.0, rec.last_applied_at - last_event)
                if self.exit_after_replay:
                    return RunResult(replay_stats, gap, await rec.report())
            else:
                self._start_udev(rec)
            await self._stop.wait()
            return RunResult(replay_stats, gap, await rec.report())
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if self._udev is not None:
                self._udev.stop()
            if self._dbus is not None:
                try:
                    await self._dbus.stop()
                except Exception as err:
                    log.warning("D-Bus shutdown: %s", err)
            self.notifier.stopping()
            await rec.stop()

    def _start_udev(self, rec: Reconciler) -> None:
        from kdumpd.events.udev import UdevSource

        src = UdevSource(rec.event, source=self.settings.event_source)
        try:
            src.start()
        except (KdumpdError, OSError) as err:
            log.error("no hotplug events: %s (rescan via D-Bus or SIGHUP still works)", err)
            return
        self._udev = src

    async def _start_dbus(self) -> None:
        if not self.settings.dbus or self.reconciler is None:
            return
        if importlib.util.find_spec("kdumpd.interfaces.dbus") is None:
            return
        from kdumpd.interfaces import dbus

        try:
            self._dbus = await dbus.serve(None, self.store, self.reconciler)
        except (KdumpdError, OSError) as err:
            log.warning("D-Bus interface not available: %s", err)

    async def _sighup(self) -> None:
        if self.notifier is not None:
            self.notifier.send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = load_settings(self.config_path, self.overrides)
        except KdumpdError as err:
            log.error("SIGHUP: keeping the running configuration: %s", err)
            if self.notifier is not None:
                self.notifier.send("READY=1")
            return
        self.settings = new
        rec = self.reconciler
        if rec is not None:
            rec.debouncer.quiet = new.debounce.quiet_ms / 1000
            rec.debouncer.max_staleness = new.debounce.max_ms / 1000
            if rec.backend.name in ("file", "kernel"):
                try:
                    fresh = make_backend(rec.backend.name, new, self.syscalls_factory)
                    _carry_last_good(rec.backend, fresh)
                    rec.backend = fresh
                except KdumpdError as err:
                    log.error("SIGHUP: keeping the running backend: %s", err)
            log.info("configuration reloaded; reloading the crash image")
            try:
                await rec.reload()
            except KdumpdError as err:
                log.error("SIGHUP reload: %s", err)
        if self.notifier is not None:
            self.notifier.send("READY=1")


def _carry_last_good(old: Backend, new: Backend) -> None:
    """Keep the inputs that last loaded, so a bad new kernel can fall back to them."""
    from kdumpd.daemon.backends.file import FileBackend

    src = getattr(old, "loader", old)
    dst = getattr(new, "loader", new)
    if isinstance(src, FileBackend) and isinstance(dst, FileBackend):
        dst.last_good = src.last_good


def state_ok(state: dict[str, Any]) -> bool:
    return state.get("state") in (str(ImageState.LOADED),)
