"""``kexec-tools`` back-end: the distribution's ``kexec -p`` loads the crash image.

For kernels where kdumpd has no loader of its own: Debian's ppc64el kernels have no
``kexec_file_load`` (CONFIG_KEXEC_FILE is not set), so the image has to come from
``kexec_load`` with a crash FDT and purgatory that kexec-tools builds.  Selectable on
any architecture (``backend = "kexec-tools"``); ``auto`` picks it only where
``kexec_file_load`` is missing (:func:`kdumpd.daemon.backends.probe.probe_backend`).

What it runs, and what it never runs:

- ``kexec -p KERNEL [--initrd=INITRD] --append=CMDLINE [KEXEC_ARGS...] [--hotplug]``:
  one process per burst.  Never ``kexec -p -u`` first: ``kexec_load`` replaces the
  crash image inside its own syscall, an unload before it would only widen the
  window without a crash kernel.  ``KEXEC_ARGS`` (kdump-utils' ``/etc/sysconfig/kdump``)
  is passed through, except options that would unload, execute or load a non-crash
  image (:data:`REFUSED_ARGS`).
- ``--hotplug`` is added when the kernel has crash hotplug (``crash_hotplug`` files,
  6.6+) and the installed kexec-tools lists the option in ``kexec --help`` (2.0.29 has
  it; Debian bookworm's 2.0.25 does not).
  The kernel then updates the loaded image itself on CPU/memory hotplug (it keeps
  room for every possible CPU in the FDT and a full-size elfcorehdr), so bursts cost
  no load; ``crash_hotplug`` reads 1 after such a load.  Otherwise every burst loads
  once.
- The process runs through asyncio's subprocess support (the loop keeps answering
  D-Bus and the watchdog) with a timeout (:data:`DEFAULT_TIMEOUT`); a process that
  does not finish in time is killed.

A failure raises :class:`KexecToolsError` with one line: the exit status and kexec's
last stderr line.  ``kexec_load`` frees the old crash image only inside the syscall;
kexec-tools fails before it for most mistakes (a missing file, a bad option, no room
in the reservation), so the old image usually stays.  ``is_loaded()`` reads
``kexec_crash_loaded`` and the reconciler restores the last good invocation only when
it reads 0: the state never claims an image the kernel does not have.

The hotplug-capable load holds the kernel's kexec lock like any load, so it is
wrapped by :class:`~kdumpd.daemon.backends.inplace.LoadRaceGuard` as the ``kernel``
back-end's loads are.

kexec-tools builds the elfcorehdr itself, and on ppc64 it leaves out all RAM at and
above ``/chosen/linux,memory-limit`` (docs/kernel-interfaces.md §10).  Debian's 6.12
ppc64el kernel publishes the end of boot memory there, so memory hot-added above it
is not in an image loaded afterwards.  :class:`MemoryLimitClip` names that RAM after
each load; ``stale_reason`` then says so (the state is ``stale``), until the kernel
rebuilds the elfcorehdr itself on a memory change (an image loaded with
``--hotplug``) or a load finds nothing left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kdumpd.core.errors import KdumpdError, one_line
from kdumpd.core.ranges import ram_minus_reservations, subtract
from kdumpd.core.topology import MemRange, Resource, Topology, system_ram
from kdumpd.daemon.backends.base import ApplyResult, BackendName, LoadRequest, LoadSyscall
from kdumpd.daemon.backends.file import KexecFiles
from kdumpd.daemon.backends.inplace import (
    HOTPLUG_REREAD_DELAY,
    InPlaceLoader,
    LoadRaceGuard,
    RemovedRam,
    read_hotplug_after_load,
)
from kdumpd.system.devicetree import read_memory_limit
from kdumpd.system.kexecsysfs import crash_hotplug_file, read_crash_hotplug
from kdumpd.system.sysroot import Sysroot
from kdumpd.system.topologyreader import read_iomem

log = logging.getLogger("kdumpd.daemon.backends.kexectools")

DEFAULT_TIMEOUT = 120.0  # seconds for one ``kexec -p`` (a signed kernel under TCG: seconds)
PROBE_TIMEOUT = 10.0  # ``kexec --help`` / ``--version``
# Options that unload, execute, or load a kernel that is not the crash kernel.
REFUSED_ARGS = frozenset({"-u", "--unload", "-e", "--exec", "-l", "--load", "-f", "--force"})
HOTPLUG_OPTION = "--hotplug"
FILE_SYSCALL_OPTIONS = frozenset({"-s", "--kexec-file-syscall"})


class KexecToolsError(KdumpdError):
    """``kexec`` failed or could not run; the message is one line."""


@dataclass(frozen=True, slots=True)
class KexecTool:
    """What the installed kexec-tools can do (from ``--version`` and ``--help``)."""

    path: str
    version: str  # "kexec-tools 2.0.25", or "" when it did not say
    hotplug: bool  # ``--hotplug`` (KEXEC_CRASH_HOTPLUG_SUPPORT) is offered


class MemoryLimitClip:
    """The RAM kexec-tools' ppc64 loader left out of the image it loaded last.

    kexec-tools reads ``/chosen/linux,memory-limit`` as a ``mem=`` limit and cuts every
    crash memory range there.  6.1 publishes 0 (no limit); Debian's 6.12 ppc64el
    kernel publishes the end of boot memory, so after a memory hot-add above it a
    load describes less RAM than the machine has (docs/kernel-interfaces.md §10).
    Only powerpc publishes the property; elsewhere nothing else is read.

    ``/proc/iomem`` is read *after* the load, alone (no whole snapshot: that would
    read ``kexec_crash_size``, whose read takes the kexec lock and can make the kernel
    skip an in-place update): memory that arrived while kexec-tools ran is counted as
    left out (the cautious side), never missed."""

    def __init__(
        self,
        read_limit: Callable[[], int | None],
        read_iomem: Callable[[], tuple[Resource, ...]],
    ) -> None:
        self.read_limit = read_limit
        self.read_iomem = read_iomem
        self.left_out: tuple[MemRange, ...] = ()
        self.limit = 0
        self.unknown = ""  # why what was left out could not be told
        self._ram: tuple[MemRange, ...] | None = None  # System RAM when it was told

    @property
    def reason(self) -> str:
        if self.unknown:
            return self.unknown
        if not self.left_out:
            return ""
        mib = sum(r.size for r in self.left_out) >> 20
        first = self.left_out[0]
        more = f" and {len(self.left_out) - 1} more" if len(self.left_out) > 1 else ""
        return (
            f"kexec-tools left {mib} MiB of RAM ({first.start:#x}-{first.end:#x}{more}) "
            f"out of the elfcorehdr: it stops at /chosen/linux,memory-limit {self.limit:#x}"
        )

    def clear(self) -> None:
        self.left_out, self._ram, self.unknown = (), None, ""

    def loaded(self, before: Topology | None = None) -> None:
        """After a load by kexec-tools (or adopting one): what it left out of the RAM
        the machine has now.  Never raises: a load that succeeded stays a success.
        ``before``: the topology the load was asked for, the RAM an ``unknown`` reason
        is then measured against (a memory change after it ends the reason)."""
        self.clear()
        try:
            limit = self.read_limit()
            if not limit:
                return
            iomem = self.read_iomem()
        except Exception as err:  # a read error must not fail a load that succeeded
            why = one_line(str(err) or type(err).__name__, 300)
            self.unknown = f"cannot tell what RAM kexec-tools left out of the elfcorehdr: {why}"
            self._ram = before.system_ram if before is not None else None
            log.warning("%s", self.unknown)
            return
        self.limit = limit
        self.left_out = subtract(
            ((r.start, r.end) for r in ram_minus_reservations(iomem)), [(0, limit - 1)]
        )
        self._ram = system_ram(iomem)
        if self.left_out:
            log.warning("%s; the dump will lack it", self.reason)

    def memory_changed(self, topology: Topology | None) -> None:
        """An in-place update (an image loaded with ``--hotplug``): after a memory
        change the kernel rebuilt the whole elfcorehdr from its own memory list, which
        has no such limit.  A CPU change rebuilds no elfcorehdr on ppc64."""
        if not (self.left_out or self.unknown) or topology is None:
            return
        ram = topology.system_ram
        if self._ram is None:  # unknown since the load: from now on
            self._ram = ram
            return
        if ram != self._ram:
            log.info(
                "the kernel rebuilt the elfcorehdr after a memory change: %s",
                "nothing left out any more",
            )
            self.clear()


def _last_line(text: bytes) -> str:
    lines = [ln.strip() for ln in text.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


async def run_process(argv: Sequence[str], timeout: float) -> tuple[int, bytes, bytes]:
    """Run ``argv`` without a shell; (exit status, stdout, stderr).  Killed after
    ``timeout`` seconds (then :class:`KexecToolsError`)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as err:
        raise KexecToolsError(f"{argv[0]}: cannot run: {err.strerror or err}") from None
    try:
        out, err_out = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise KexecToolsError(
            f"{Path(argv[0]).name} {' '.join(argv[1:2])}: no answer after {timeout:.0f} s; killed"
        ) from None
    assert proc.returncode is not None
    return proc.returncode, out, err_out


async def detect_tool(binary: str, timeout: float = PROBE_TIMEOUT) -> KexecTool:
    """Run ``kexec --version`` and ``kexec --help`` once."""
    path = binary if "/" in binary else (shutil.which(binary) or binary)
    _, out, err = await run_process([path, "--version"], timeout)
    version = _last_line(out) or _last_line(err)
    _, hout, herr = await run_process([path, "--help"], timeout)
    text = (hout + herr).decode(errors="replace")
    hotplug = re.search(rf"(^|\s){re.escape(HOTPLUG_OPTION)}\b", text) is not None
    return KexecTool(path=path, version=version, hotplug=hotplug)


def check_kexec_args(args: Sequence[str]) -> tuple[str, ...]:
    """``KEXEC_ARGS`` as given, or :class:`KexecToolsError` for an option that would
    unload, execute or load something other than the crash kernel."""
    for a in args:
        if a.split("=", 1)[0] in REFUSED_ARGS:
            raise KexecToolsError(
                f"KEXEC_ARGS: {a!r} is refused (kdumpd only ever runs kexec -p, never an "
                "unload, exec or non-crash load)"
            )
    return tuple(args)


class KexecToolsBackend(InPlaceLoader):
    consumes_image = False
    load_syscall = LoadSyscall.KEXEC_LOAD

    def __init__(
        self,
        files: KexecFiles,
        sysroot: str | Path = "/",
        *,
        kexec_args: Sequence[str] = (),
        binary: str = "kexec",
        timeout: float = DEFAULT_TIMEOUT,
        kernel_hotplug: bool | None = None,
        read_hotplug: Callable[[Path], bool | None] = read_crash_hotplug,
        hotplug_reread_delay: float = HOTPLUG_REREAD_DELAY,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.files = files
        self.sysroot = Path(sysroot)
        self.kexec_args = check_kexec_args(kexec_args)
        self.binary = binary
        self.timeout = timeout
        self.read_hotplug = read_hotplug
        self.hotplug_reread_delay = hotplug_reread_delay
        self.sleep = sleep
        # CONFIG_CRASH_HOTPLUG: decided once from the files' existence (a stat).
        self.kernel_hotplug = (
            crash_hotplug_file(self.sysroot) is not None
            if kernel_hotplug is None
            else kernel_hotplug
        )
        self.tool: KexecTool | None = None  # detected at the first load
        self.last_good: tuple[KexecFiles, tuple[str, ...]] | None = None
        # The loaded image is ours and was loaded hotplug-capable (set by our loads
        # and by adopt()); only then may a burst skip the load.
        self.own_hotplug_load = False
        self.hotplug_flag: bool | None = None  # crash_hotplug as read after our last load
        self.removed_ram = RemovedRam()
        self.race = LoadRaceGuard(self.name)
        # the property is powerpc's: where it is set, the iomem is a ppc64 one
        self.clip = MemoryLimitClip(
            lambda: read_memory_limit(Sysroot(self.sysroot)),
            lambda: read_iomem(Sysroot(self.sysroot), "ppc64"),
        )

    @property
    def name(self) -> BackendName:
        return BackendName.KEXEC_TOOLS

    def _file_syscall(self) -> bool:
        return any(a.split("=", 1)[0] in FILE_SYSCALL_OPTIONS for a in self.kexec_args)

    @property
    def updated_in_place(self) -> bool:
        """The kernel keeps our image current: it has crash hotplug and our loads are
        hotplug-capable (``--hotplug``, or ``-s``: a kexec_file_load image)."""
        if not self.kernel_hotplug:
            return False
        if self._file_syscall():
            return True
        return self.tool is not None and self.tool.hotplug

    @property
    def stale_reason(self) -> str:
        return super().stale_reason or self.clip.reason

    def adopt(self) -> bool:
        """Every burst reloads on a kernel without crash hotplug, so any loaded image
        will be replaced anyway.  With crash hotplug the image is adopted only when
        the kernel says it is hotplug-capable (``crash_hotplug`` reads 1)."""
        adopted = True
        if self.kernel_hotplug:
            flag = self.read_hotplug(self.sysroot)
            self.own_hotplug_load = flag is True
            self.hotplug_flag = flag
            adopted = flag is not False
        if adopted:
            # what the adopted image lacks is not recorded: told again, cautiously
            # (an image the kernel rebuilt since is reported until the next change)
            self._tell_left_out()
        return adopted

    def _tell_left_out(self, before: Topology | None = None) -> None:
        """What the image kexec-tools just loaded lacks (``-s``: nothing, the kernel
        builds a kexec_file_load image's elfcorehdr itself)."""
        if self._file_syscall():
            self.clip.clear()
        else:
            self.clip.loaded(before)

    def input_digests(self) -> dict[str, str]:
        return {
            **self.files.digests(),
            "kexec_args": hashlib.sha256("\0".join(self.kexec_args).encode()).hexdigest(),
        }

    async def _detect(self) -> KexecTool:
        if self.tool is None:
            self.tool = await detect_tool(self.binary)
            log.info(
                "%s at %s; --hotplug %s; kernel crash hotplug %s",
                self.tool.version or "kexec (version unknown)",
                self.tool.path,
                "offered" if self.tool.hotplug else "not offered",
                "yes" if self.kernel_hotplug else "no",
            )
        return self.tool

    def argv(self, files: KexecFiles, tool: KexecTool) -> list[str]:
        """The one command line of a load (never ``-u``)."""
        argv = [tool.path, "-p", files.kernel]
        if files.initrd:
            argv.append(f"--initrd={files.initrd}")
        argv.append(f"--append={files.cmdline}")
        argv.extend(self.kexec_args)
        if (
            self.kernel_hotplug
            and tool.hotplug
            and not self._file_syscall()
            and HOTPLUG_OPTION not in self.kexec_args
        ):
            argv.append(HOTPLUG_OPTION)
        return argv

    async def _run(self, files: KexecFiles) -> ApplyResult:
        tool = await self._detect()
        argv = self.argv(files, tool)
        t0 = time.monotonic_ns()
        rc, _, err = await run_process(argv, self.timeout)
        usec = (time.monotonic_ns() - t0) // 1000
        if rc != 0:
            why = _last_line(err) or "no message"
            raise KexecToolsError(f"kexec -p failed (exit status {rc}): {why}")
        self.last_good = (files, self.kexec_args)
        # The window without a crash image is inside kexec_load(2), which runs within
        # this process: its run time bounds the window from above.
        return ApplyResult(True, usec, self.updated_in_place, " ".join(argv))

    def _reload_reason(self) -> str:
        """Why this burst must load, or "" when the kernel keeps the image current."""
        if not self.updated_in_place:
            return "every burst loads (no in-kernel crash hotplug for this image)"
        if not self.is_loaded():
            return "kexec_crash_loaded reads 0"
        if not self.own_hotplug_load:
            return "the loaded image was not loaded hotplug-capable by kdumpd"
        return self.race.suspect

    async def apply(self, request: LoadRequest) -> ApplyResult:
        await self._detect()
        removed = self.removed_ram.check(request.topology)
        if not request.force_load and self.own_hotplug_load:
            why = self._reload_reason() or removed
            if not why:
                self.clip.memory_changed(request.topology)
                return ApplyResult(False, 0, True, "kernel updated the image in place")
            log.warning("%s: loading the crash image with kexec -p", why)
        return await self._load(request, self.files)

    async def _load(self, request: LoadRequest, files: KexecFiles) -> ApplyResult:
        previous = self.own_hotplug_load
        self.own_hotplug_load = False

        async def run_then_read_flag() -> ApplyResult:
            # inside the guard: reading crash_hotplug takes the kexec lock too, so an
            # event it makes the kernel skip moves the guard's "after" key
            ran = await self._run(files)
            # 0 twice: the burst path stops trusting in-place updates
            self.hotplug_flag = await read_hotplug_after_load(
                self.read_hotplug, self.sysroot, self.sleep, self.hotplug_reread_delay
            )
            return ran

        try:
            if self.updated_in_place:
                result = await self.race.load(run_then_read_flag, request.read_key)
            else:
                result = await self._run(files)
        except BaseException:
            self.own_hotplug_load = previous and self.is_loaded()
            raise
        if not self.is_loaded():
            log.error("kexec -p exited 0 but kexec_crash_loaded is not 1")
        self._tell_left_out(request.topology)
        if self.updated_in_place:
            self.own_hotplug_load = self.hotplug_flag is not False
            if not self.own_hotplug_load:
                log.warning(
                    "crash_hotplug read 0 twice after our kexec -p: the kernel may not "
                    "update this image in place; every burst loads until it reads 1"
                )
                return ApplyResult(
                    result.loaded, result.gap_usec, False, result.detail, result.loads
                )
        return result

    async def restore(self, request: LoadRequest) -> ApplyResult:
        if self.last_good is None:
            raise KexecToolsError("no crash image has loaded successfully yet; nothing to restore")
        files, _ = self.last_good
        result = await self._load(request, files)
        return ApplyResult(
            result.loaded,
            result.gap_usec,
            result.kernel_updates_in_place,
            f"restored: {result.detail}",
            result.loads,
        )

    async def unload(self) -> None:
        """An explicit Unload (D-Bus/kdumpctl stop) is the one place ``-u`` is used."""
        tool = await self._detect()
        rc, _, err = await run_process([tool.path, "-p", "-u"], self.timeout)
        if rc != 0:
            raise KexecToolsError(
                f"kexec -p -u failed (exit status {rc}): {_last_line(err) or 'no message'}"
            )
        self.own_hotplug_load = False
        self.clip.clear()


def kexec_binary_available(binary: str = "kexec") -> str | None:
    """The path of ``kexec`` (on PATH, or ``binary`` when it is a path), or None."""
    if "/" in binary:
        return binary if os.access(binary, os.X_OK) else None
    return shutil.which(binary)
