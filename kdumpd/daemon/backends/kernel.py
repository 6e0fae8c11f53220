"""``kernel`` backend: the kernel's own crash hotplug (6.6+) keeps the image current.

The image is loaded once with ``kexec_file_load`` (which makes it hotplug-capable:
``image->file_mode``) and never reloaded on hotplug; the kernel rewrites the
elfcorehdr inside its own handler.  After each burst we only verify:
``/sys/devices/system/{cpu,memory}/crash_hotplug`` must read 1 — they read 0 while
the kexec lock is contended, so a 0 is retried with backoff — and
``/sys/kernel/kexec_crash_loaded`` must read 1.  If the loaded image turns out not
to be hotplug-capable, the burst falls back to one ``kexec_file_load``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from kdumpd.daemon.backends.base import ApplyResult, LoadRequest
from kdumpd.daemon.backends.file import FileBackend

log = logging.getLogger("kdumpd.daemon.backends.kernel")

CPU_CRASH_HOTPLUG = "sys/devices/system/cpu/crash_hotplug"
MEMORY_CRASH_HOTPLUG = "sys/devices/system/memory/crash_hotplug"
KEXEC_CRASH_LOADED = "sys/kernel/kexec_crash_loaded"


def read_flag(sysroot: Path, rel: str) -> bool | None:
    try:
        return (sysroot / rel).read_text().strip() == "1"
    except OSError:
        return None


class KernelBackend:
    def __init__(
        self,
        loader: FileBackend,
        sysroot: str | Path = "/",
        *,
        verify_attempts: int = 8,
        verify_delay: float = 0.01,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.loader = loader
        self.sysroot = Path(sysroot)
        self.verify_attempts = verify_attempts
        self.verify_delay = verify_delay
        self.sleep = sleep
        self.in_place_updates = 0

    @property
    def name(self) -> str:
        return "kernel"

    def is_loaded(self) -> bool:
        return read_flag(self.sysroot, KEXEC_CRASH_LOADED) is True

    async def hotplug_ready(self) -> bool:
        """Both crash_hotplug files (those that exist) read 1, retrying transient 0s."""
        delay = self.verify_delay
        for attempt in range(self.verify_attempts):
            flags = [read_flag(self.sysroot, p) for p in (CPU_CRASH_HOTPLUG, MEMORY_CRASH_HOTPLUG)]
            present = [f for f in flags if f is not None]
            if present and all(present):
                return True
            if not present:
                return False
            if attempt + 1 < self.verify_attempts:
                await self.sleep(delay)
                delay = min(delay * 2, 0.5)
        return False

    async def apply(self, request: LoadRequest) -> ApplyResult:
        if not request.force_load and self.is_loaded():
            if await self.hotplug_ready():
                self.in_place_updates += 1
                return ApplyResult(False, 0, True, "kernel updated the elfcorehdr in place")
            log.warning(
                "crash_hotplug does not read 1 for the loaded image; reloading it with "
                "kexec_file_load so the kernel can update it in place from now on"
            )
        result = await self.loader.apply(request)
        ready = await self.hotplug_ready()
        if not self.is_loaded():
            log.error("kexec_file_load returned success but kexec_crash_loaded is not 1")
        return ApplyResult(result.loaded, result.gap_usec, ready, result.detail)

    async def restore(self, request: LoadRequest) -> ApplyResult:
        return await self.loader.restore(request)

    async def unload(self) -> None:
        await self.loader.unload()
