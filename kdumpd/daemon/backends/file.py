"""``file`` backend: ``kexec_file_load(2)`` with the crash kernel, initrd and cmdline.

One syscall per burst and never an unload first: the kernel frees the old crash
image and installs the new one inside the same syscall (a window of one syscall
instead of unload + load).  The kernel builds the elfcorehdr itself from its own
view of the machine; our regenerated header is what the state reports and what
the kernel's copy must agree with.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from kdumpd.core.errors import KdumpdError
from kdumpd.daemon.backends.base import ApplyResult, LoadRequest
from kdumpd.system.kexec import KexecSyscalls, crash_file_load, crash_file_unload

log = logging.getLogger("kdumpd.daemon.backends.file")

DEFAULT_APPEND = "irqpoll nr_cpus=1 reset_devices"


@dataclass(frozen=True, slots=True)
class KexecFiles:
    kernel: str
    initrd: str | None
    cmdline: str


def _release(sysroot: Path) -> str:
    try:
        return (sysroot / "proc/sys/kernel/osrelease").read_text().strip()
    except OSError:
        return os.uname().release


def crash_cmdline(boot_cmdline: str, append: str = DEFAULT_APPEND) -> str:
    """``/proc/cmdline`` minus ``crashkernel=`` (and BOOT_IMAGE=), plus ``append``."""
    words = [
        w
        for w in boot_cmdline.split()
        if not w.startswith(("crashkernel=", "BOOT_IMAGE="))
        and w.split("=")[0] not in {"irqpoll", "nr_cpus", "reset_devices", "maxcpus"}
    ]
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
                break
    if cmdline:
        c = cmdline
    else:
        try:
            boot = (root / "proc/cmdline").read_text()
        except OSError as err:
            raise KdumpdError(f"{root / 'proc/cmdline'}: {err.strerror}") from None
        c = crash_cmdline(boot, append)
    if re.search(r"[\x00\n]", c):
        raise KdumpdError("kexec cmdline: contains a NUL or newline")
    return KexecFiles(k, i, c)


class FileBackend:
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
    def name(self) -> str:
        return "file"

    def is_loaded(self) -> bool:
        try:
            return (self.sysroot / "sys/kernel/kexec_crash_loaded").read_text().strip() == "1"
        except OSError:
            return False

    def _load(self, files: KexecFiles) -> int:
        t0 = time.monotonic_ns()
        crash_file_load(self.syscalls, files.kernel, files.initrd, files.cmdline)
        gap = (time.monotonic_ns() - t0) // 1000
        self.last_good = files
        return gap

    async def apply(self, request: LoadRequest) -> ApplyResult:
        gap = self._load(self.files)
        return ApplyResult(True, gap, False, f"kexec_file_load {self.files.kernel}")

    async def restore(self, request: LoadRequest) -> ApplyResult:
        if self.last_good is None:
            raise KdumpdError("no crash image has loaded successfully yet; nothing to restore")
        gap = self._load(self.last_good)
        return ApplyResult(True, gap, False, f"restored {self.last_good.kernel}")

    async def unload(self) -> None:
        crash_file_unload(self.syscalls)
