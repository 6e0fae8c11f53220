"""``kernel`` back-end: the kernel's own crash hotplug (6.6+) keeps the image current.

The image is loaded with ``kexec_file_load``, which makes it hotplug-capable
(docs/kernel-interfaces.md §3), and the kernel rewrites its elfcorehdr on hotplug.

Reads, few because ``crash_hotplug`` takes the kexec lock (docs/kernel-interfaces.md
§2): CONFIG_CRASH_HOTPLUG is a stat at construction; a burst reads only the lock-free
``kexec_crash_loaded``; ``crash_hotplug`` is read once after our own load (for the
report) and up to :data:`ADOPT_READS` times at adoption (one 0 proves nothing).

A burst loads (one ``kexec_file_load``) only when no image is loaded, when the loaded
one is not ours from ``kexec_file_load``, when the kernel lacks CONFIG_CRASH_HOTPLUG,
after System RAM was hot-removed (:class:`~kdumpd.daemon.backends.inplace.RemovedRam`)
or when our own load may have made the kernel skip an update
(:class:`~kdumpd.daemon.backends.inplace.LoadRaceGuard`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from kdumpd.daemon.backends.base import ApplyResult, BackendName, LoadRequest, LoadSyscall
from kdumpd.daemon.backends.file import FileBackend
from kdumpd.daemon.backends.inplace import InPlaceLoader, LoadRaceGuard, RemovedRam
from kdumpd.system.kexecsysfs import crash_hotplug_file, read_crash_hotplug

log = logging.getLogger("kdumpd.daemon.backends.kernel")

ADOPT_READS = 3  # crash_hotplug reads at adoption (a single 0 is not proof)
ADOPT_READ_DELAY = 0.05  # seconds between them


class KernelBackend(InPlaceLoader):
    consumes_image = False
    load_syscall = LoadSyscall.KEXEC_FILE_LOAD

    def __init__(
        self,
        loader: FileBackend,
        sysroot: str | Path = "/",
        *,
        hotplug_config: bool | None = None,
        read_hotplug: Callable[[Path], bool | None] = read_crash_hotplug,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.loader = loader
        self.sleep = sleep
        self.sysroot = Path(sysroot)
        self.read_hotplug = read_hotplug
        self.hotplug_config = (
            crash_hotplug_file(self.sysroot) is not None
            if hotplug_config is None
            else hotplug_config
        )
        if not self.hotplug_config:
            log.warning(
                "backend kernel: this kernel has no CONFIG_CRASH_HOTPLUG; every burst "
                "reloads the image as the file backend does"
            )
        # The loaded crash image is ours, loaded with kexec_file_load (so hotplug-capable
        # on a CONFIG_CRASH_HOTPLUG kernel): set by our loads and by adopt().
        self.own_file_load = False
        self.hotplug_flag: bool | None = None  # crash_hotplug as read after our last load
        # System RAM as of the previous burst: a range that disappears from /proc/iomem
        # was hot-removed, which the kernel's own update does not see.
        self.removed_ram = RemovedRam()
        # Our own load holds the kexec lock: a hotplug event during it is skipped by
        # the kernel.  The guard compares the topology around the syscall.
        self.race = LoadRaceGuard(self.name)

    @property
    def name(self) -> BackendName:
        return BackendName.KERNEL

    @property
    def updated_in_place(self) -> bool:
        """The kernel keeps our image current (so it can also skip an update)."""
        return self.hotplug_config

    def adopt(self) -> bool:
        """Take over the loaded image only if the kernel says it is hotplug-capable
        (``crash_hotplug`` reads 1 in one of a few reads; the kexec lock is taken by
        each read, so this runs once, at start, never per burst)."""
        if not self.hotplug_config:
            self.own_file_load = True  # every burst reloads anyway
            return True
        flag: bool | None = None
        for i in range(ADOPT_READS):
            if i:
                self.sleep(ADOPT_READ_DELAY)
            flag = self.read_hotplug(self.sysroot)
            if flag is not False:
                break
        if flag is False:
            log.warning(
                "crash_hotplug reads 0 %d times: the loaded image is not hotplug-capable "
                "(another loader replaced ours?); loading afresh",
                ADOPT_READS,
            )
            self.own_file_load = False
            return False
        self.own_file_load = True
        self.hotplug_flag = flag
        return True

    def input_digests(self) -> dict[str, str]:
        return self.loader.input_digests()

    def _in_place(self) -> str:
        """Why the loaded image needs a reload, or "" when the kernel keeps it current."""
        if not self.hotplug_config:
            return "the kernel has no CONFIG_CRASH_HOTPLUG"
        if not self.is_loaded():
            return "kexec_crash_loaded reads 0"
        if not self.own_file_load:
            return "the loaded image was not loaded by kdumpd with kexec_file_load"
        return self.race.suspect

    async def apply(self, request: LoadRequest) -> ApplyResult:
        removed = self.removed_ram.check(request.topology)
        if not request.force_load:
            why = self._in_place() or removed
            if not why:
                return ApplyResult(False, 0, True, "kernel updated the elfcorehdr in place")
            log.warning("%s: loading the crash image with kexec_file_load", why)
        previous = self.own_file_load
        self.own_file_load = False

        async def load_then_read_flag() -> ApplyResult:
            # inside the guard: reading crash_hotplug takes the kexec lock too, so an
            # event it makes the kernel skip moves the guard's "after" key
            loaded = await self.loader.apply(request)
            self.hotplug_flag = self.read_hotplug(self.sysroot)
            return loaded

        try:
            if self.hotplug_config:
                result = await self.race.load(load_then_read_flag, request.read_key)
            else:  # nothing updates the image in place: nothing can be skipped
                result = await self.loader.apply(request)
                self.hotplug_flag = None
        except BaseException:
            # refused before the syscall: our old image is still loaded; a failed
            # syscall freed it (kexec_crash_loaded reads 0 then)
            self.own_file_load = previous and self.is_loaded()
            raise
        self.own_file_load = True
        if not self.is_loaded():
            log.error("kexec_file_load returned success but kexec_crash_loaded is not 1")
        if self.hotplug_flag is False:
            log.info(
                "crash_hotplug reads 0 right after our kexec_file_load (the kexec lock was "
                "busy?); the image is hotplug-capable by construction"
            )
        return ApplyResult(
            result.loaded, result.gap_usec, self.hotplug_config, result.detail, result.loads
        )

    async def restore(self, request: LoadRequest) -> ApplyResult:
        previous = self.own_file_load
        self.own_file_load = False
        try:
            if self.hotplug_config:
                result = await self.race.load(
                    lambda: self.loader.restore(request), request.read_key
                )
            else:
                result = await self.loader.restore(request)
        except BaseException:
            self.own_file_load = previous and self.is_loaded()
            raise
        self.own_file_load = True
        return ApplyResult(
            result.loaded, result.gap_usec, self.hotplug_config, result.detail, result.loads
        )

    async def unload(self) -> None:
        await self.loader.unload()
        self.own_file_load = False
