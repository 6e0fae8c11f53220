"""``file`` backend: ``kexec_file_load(2)`` with the crash kernel, initrd and cmdline.

One syscall per burst and never an unload first: the kernel frees the old crash
image and installs the new one inside the same syscall (a window of one syscall
instead of unload + load).  The kernel builds the elfcorehdr itself from its own
view of the machine (``consumes_image = False``); our regenerated header, when it
can be built, is what the state reports and what the kernel's copy must agree with.

The syscall runs on one worker thread (``loop.run_in_executor``): it blocks for as
long as the kernel reads, verifies and places the files (tens of ms, seconds for a
signature check), and the loop must keep answering D-Bus and pinging the watchdog
meanwhile.  A thread is fine here because it is one blocking syscall at a time
(serialised by the reconciler's lock and the single worker), not I/O polling.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from kdumpd.arch.x86_64.bzimage import MAX_DMCRYPTKEYS_STR_LEN
from kdumpd.daemon.backends.base import (
    ApplyResult,
    BackendName,
    LoadRefused,
    LoadRequest,
    LoadSyscall,
    NothingToRestore,
    kexec_executor,
)
from kdumpd.system.kdumpconf import (
    DEFAULT_CAPTURE_APPEND,
    DEFAULT_COMMANDLINE_REMOVE,
    split_cmdline,
)
from kdumpd.system.kexec import (
    KexecSyscalls,
    crash_file_load,
    crash_file_unload,
)
from kdumpd.system.kexecsysfs import crash_image_loaded
from kdumpd.system.sysroot import Sysroot

log = logging.getLogger("kdumpd.daemon.backends.file")

DEFAULT_APPEND = DEFAULT_CAPTURE_APPEND


@dataclass(frozen=True, slots=True)
class KexecFiles:
    kernel: str
    initrd: str | None
    cmdline: str

    def digests(self) -> dict[str, str]:
        """kernel and initrd: path, size and mtime (a rebuilt kdump initrd counts as a
        change); cmdline: its text.  A restart reloads when one of them changed."""
        return {
            "kernel": _file_digest(self.kernel),
            "initrd": _file_digest(self.initrd) if self.initrd else "",
            "cmdline": hashlib.sha256(self.cmdline.encode()).hexdigest(),
        }


def _release(sysroot: Path) -> str:
    return Sysroot(sysroot).read_value("/proc/sys/kernel/osrelease") or os.uname().release


# What the capture kernel must not inherit from the first kernel's command line:
# kdumpctl's prepare_cmdline() removals that are not about finding the root device
# (``root=``/``rd.lvm.lv=``... stay: Debian's kdump initrd is a normal initramfs that
# mounts root), kdump-utils' default KDUMP_COMMANDLINE_REMOVE, BOOT_IMAGE, and what
# ``append`` sets again.
CRASH_CMDLINE_REMOVE = frozenset(
    {
        "crashkernel",
        "panic_on_warn",
        "BOOT_IMAGE",
        *DEFAULT_COMMANDLINE_REMOVE,
        "irqpoll",
        "nr_cpus",
        "reset_devices",
        "maxcpus",
    }
)


def crash_cmdline(boot_cmdline: str, append: str = DEFAULT_APPEND) -> str:
    """``/proc/cmdline`` minus :data:`CRASH_CMDLINE_REMOVE`, plus ``append``."""
    words = [w for w in split_cmdline(boot_cmdline) if w.split("=")[0] not in CRASH_CMDLINE_REMOVE]
    return " ".join([*words, *append.split()]).strip()


def default_files(
    sysroot: str | Path,
    *,
    kernel: str = "",
    initrd: str = "",
    cmdline: str = "",
    append: str = DEFAULT_APPEND,
) -> KexecFiles:
    """Resolve kernel/initrd/cmdline like kdump-utils/kdump-tools do, below ``sysroot``.

    Overrides win; otherwise ``/boot/vmlinuz-$(uname -r)``, the first kdump initrd
    that exists among ``/var/lib/kdump/initrd.img-R`` (Debian kdump-tools),
    ``/var/lib/kdump/initramfs-Rkdump.img``, ``/boot/initramfs-Rkdump.img``
    (Fedora/RHEL) and ``/boot/initrd.img-R``; cmdline from ``/proc/cmdline``.
    """
    root = Path(sysroot)
    rel = _release(root)

    def under(p: str) -> str:
        return str(root / p.lstrip("/"))

    k = under(kernel) if kernel else under(f"/boot/vmlinuz-{rel}")
    if initrd:
        i: str | None = under(initrd)
    else:
        i = None
        for cand in (
            f"/var/lib/kdump/initrd.img-{rel}",
            f"/var/lib/kdump/initramfs-{rel}kdump.img",
            f"/boot/initramfs-{rel}kdump.img",
            f"/boot/initrd.img-{rel}",
        ):
            if os.path.exists(under(cand)):
                i = under(cand)
                if cand.startswith("/boot/initrd.img-"):
                    log.warning(
                        "no kdump initrd found; using %s, the normal boot initramfs (it may "
                        "not save a vmcore: build a kdump initrd or set [kexec] initrd)",
                        i,
                    )
                break
    if cmdline:
        c = cmdline
    else:
        boot = Sysroot(root).read("/proc/cmdline", required=True)
        assert boot is not None
        c = crash_cmdline(boot, append)
    if re.search(r"[\x00\n]", c):
        raise LoadRefused("kexec cmdline: contains a NUL or newline")
    return KexecFiles(k, i, c)


def _file_digest(path: str) -> str:
    try:
        st = os.stat(path)
        key = f"{path}\0{st.st_size}\0{st.st_mtime_ns}"
    except OSError:
        key = f"{path}\0missing"
    return hashlib.sha256(key.encode()).hexdigest()


class FileBackend:
    consumes_image = False
    load_syscall = LoadSyscall.KEXEC_FILE_LOAD

    def __init__(
        self,
        syscalls: KexecSyscalls,
        files: KexecFiles,
        sysroot: str | Path = "/",
    ) -> None:
        self.syscalls = syscalls
        self.files = files
        self.sysroot = Path(sysroot)
        self.last_good: KexecFiles | None = None

    @property
    def name(self) -> BackendName:
        return BackendName.FILE

    def is_loaded(self) -> bool:
        return crash_image_loaded(self.sysroot)

    def adopt(self) -> bool:
        return True  # every burst reloads anyway; state.json's input digests must match

    def input_digests(self) -> dict[str, str]:
        return self.files.digests()

    def _cmdline_reserve(self) -> int:
        """dm-crypt keys registered for the capture kernel (a key is a subdirectory of
        the configfs group) make the kernel prepend ``dmcryptkeys=`` too."""
        group = self.sysroot / "sys/kernel/config/crash_dm_crypt_keys"
        try:
            has_keys = any(p.is_dir() for p in group.iterdir())
        except OSError:
            return 0
        return MAX_DMCRYPTKEYS_STR_LEN if has_keys else 0

    def _load_sync(self, files: KexecFiles) -> int:
        t0 = time.monotonic_ns()
        crash_file_load(
            self.syscalls,
            files.kernel,
            files.initrd,
            files.cmdline,
            reserve=self._cmdline_reserve(),
        )
        return (time.monotonic_ns() - t0) // 1000

    async def _load(self, files: KexecFiles) -> int:
        loop = asyncio.get_running_loop()
        gap = await loop.run_in_executor(kexec_executor(), self._load_sync, files)
        self.last_good = files
        return gap

    async def apply(self, request: LoadRequest) -> ApplyResult:
        gap = await self._load(self.files)
        return ApplyResult(True, gap, False, f"kexec_file_load {self.files.kernel}")

    async def restore(self, request: LoadRequest) -> ApplyResult:
        if self.last_good is None:
            raise NothingToRestore()
        gap = await self._load(self.last_good)
        return ApplyResult(True, gap, False, f"restored {self.last_good.kernel}")

    async def unload(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(kexec_executor(), crash_file_unload, self.syscalls)
