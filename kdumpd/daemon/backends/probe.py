"""Choose the backend at start: what the running kernel can do, unless configured.

- ``kernel``: CONFIG_CRASH_HOTPLUG is present (``/sys/devices/system/{cpu,memory}/
  crash_hotplug`` or ``/sys/kernel/crash_elfcorehdr_size`` exist; kernel ≥ 6.6);
- ``file``: kexec is available but the kernel cannot update the image in place;
- ``dry-run``: no kexec in this kernel, no ``crashkernel=`` reservation, or not root.

This runs once at start (and on a reload that changes the backend setting), so its
``kexec_crash_size`` read (it takes the kexec lock) never meets a burst.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kdumpd.core.errors import InputError
from kdumpd.daemon.backends.base import Backend
from kdumpd.daemon.backends.dryrun import KEEP_LOADS, DryRunBackend
from kdumpd.daemon.backends.file import FileBackend, default_files
from kdumpd.daemon.backends.kernel import KernelBackend
from kdumpd.system.kexecsysfs import crash_hotplug_file, kexec_present, read_crash_size
from kdumpd.system.sysroot import Sysroot

if TYPE_CHECKING:
    from kdumpd.config import Settings
    from kdumpd.system.kexec import KexecSyscalls

log = logging.getLogger("kdumpd.daemon.backends.probe")


def probe_backend(sysroot: str | Path, *, euid: int | None = None) -> tuple[str, str]:
    """(backend name, reason) for ``auto``."""
    root = Sysroot(sysroot)
    if not kexec_present(root):
        return "dry-run", "the kernel has no kexec (/sys/kernel/kexec_crash_loaded missing)"
    try:
        size = read_crash_size(root)
    except InputError:
        size = None
    # None: EBUSY during a concurrent load (or unreadable): assume a reservation exists.
    if size == 0:
        return "dry-run", "no crashkernel= reservation (kexec_crash_size is 0)"
    if (os.geteuid() if euid is None else euid) != 0:
        return "dry-run", "not running as root (kexec needs CAP_SYS_BOOT)"
    hotplug = crash_hotplug_file(root)
    if hotplug is not None:
        return "kernel", f"the kernel updates crash images on hotplug ({hotplug} exists)"
    return "file", "kexec_file_load without in-kernel crash hotplug"


def make_backend(
    name: str,
    settings: Settings,
    syscalls_factory: Callable[[], KexecSyscalls] | None = None,
) -> Backend:
    if name == "dry-run":
        return DryRunBackend(settings.state_dir, keep=KEEP_LOADS)
    if syscalls_factory is None:
        from kdumpd.system.kexec import LinuxKexec

        syscalls_factory = LinuxKexec
    k = settings.kexec
    files = default_files(
        settings.sysroot, kernel=k.kernel, initrd=k.initrd, cmdline=k.cmdline, append=k.append
    )
    loader = FileBackend(syscalls_factory(), files, settings.sysroot)
    if name == "file":
        return loader
    if name == "kernel":
        return KernelBackend(loader, settings.sysroot)
    raise ValueError(f"unknown backend {name!r}")


def carry_last_good(old: Backend, new: Backend) -> None:
    """Keep the inputs that last loaded, so a bad new kernel can fall back to them."""
    src = getattr(old, "loader", old)
    dst = getattr(new, "loader", new)
    if isinstance(src, FileBackend) and isinstance(dst, FileBackend):
        dst.last_good = src.last_good
    if isinstance(old, KernelBackend) and isinstance(new, KernelBackend):
        new.own_file_load = old.own_file_load
