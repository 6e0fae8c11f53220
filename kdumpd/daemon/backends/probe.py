"""Choose the backend at start: what the running kernel can do, unless configured.

- ``kernel``: CONFIG_CRASH_HOTPLUG is present (``/sys/devices/system/{cpu,memory}/
  crash_hotplug`` or ``/sys/kernel/crash_elfcorehdr_size`` exist; kernel ≥ 6.6), on
  x86_64 too, although ``segment`` would also be updated in place there
  (``KEXEC_UPDATE_ELFCOREHDR``): neither loads per burst, and ``kexec_file_load``
  keeps signature checking (lockdown, Secure Boot) and the EFI state for the capture
  kernel (docs/design.md, "auto on 6.6+ x86_64 stays kernel");
- ``kexec-tools``: the kernel has no ``kexec_file_load`` (a probe with invalid flags
  answers ENOSYS: Debian's ppc64el kernels) and a ``kexec`` binary is installed
  (no probe while ``kernel.kexec_load_limit_reboot`` is set: it would use up one load);
- ``segment``: x86_64 without in-kernel crash hotplug, ``kexec_load`` permitted
  (no lockdown, ``kernel.kexec_load_disabled`` 0) and the purgatory built: kdumpd
  loads its own image (one ``kexec_load`` per burst);
- ``file``: kexec is available but neither of the above applies;
- ``dry-run``: no kexec in this kernel, no ``crashkernel=`` reservation, not root, or
  neither ``kexec_file_load`` nor a ``kexec`` binary.

This runs once at start (and on a reload that changes the backend setting), so its
``kexec_crash_size`` read (it takes the kexec lock) never meets a burst.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kdumpd.core.errors import InputError
from kdumpd.daemon.backends import BACKEND_NAMES
from kdumpd.daemon.backends.base import Backend, BackendName
from kdumpd.daemon.backends.dryrun import KEEP_LOADS, DryRunBackend
from kdumpd.daemon.backends.file import FileBackend, KexecFiles, default_files
from kdumpd.daemon.backends.kernel import KernelBackend
from kdumpd.daemon.backends.kexectools import KexecToolsBackend, kexec_binary_available
from kdumpd.daemon.backends.segment import SegmentBackend
from kdumpd.system.kdumpconf import read_kexec_args
from kdumpd.system.kexec import kexec_file_load_available
from kdumpd.system.kexecsysfs import (
    LOCKDOWN,
    crash_hotplug_file,
    kexec_present,
    read_crash_size,
)
from kdumpd.system.sysroot import Sysroot

KEXEC_LOAD_DISABLED = "/proc/sys/kernel/kexec_load_disabled"

if TYPE_CHECKING:
    from kdumpd.config import Settings
    from kdumpd.system.kexec import KexecSyscalls

log = logging.getLogger("kdumpd.daemon.backends.probe")


def probe_backend(
    sysroot: str | Path,
    *,
    euid: int | None = None,
    machine: str | None = None,
    file_load: Callable[[str], bool | None] | None = None,
    kexec_binary: Callable[[], str | None] = kexec_binary_available,
) -> tuple[str, str]:
    """(backend name, reason) for ``auto``.  ``file_load(machine)`` answers whether
    the kernel has ``kexec_file_load`` (default: the probe, which reads the sysroot's
    ``kexec_load_limit_reboot`` first)."""
    root = Sysroot(sysroot)
    if file_load is None:

        def file_load(m: str) -> bool | None:
            return kexec_file_load_available(m, sysroot=root)

    if not kexec_present(root):
        return (
            BackendName.DRY_RUN,
            "the kernel has no kexec (/sys/kernel/kexec_crash_loaded missing)",
        )
    try:
        size = read_crash_size(root)
    except InputError:
        size = None
    # None: EBUSY during a concurrent load (or unreadable): assume a reservation exists.
    if size == 0:
        return BackendName.DRY_RUN, "no crashkernel= reservation (kexec_crash_size is 0)"
    if (os.geteuid() if euid is None else euid) != 0:
        return BackendName.DRY_RUN, "not running as root (kexec needs CAP_SYS_BOOT)"
    machine = machine or platform.machine()
    has_file_load = file_load(machine)
    if has_file_load is False:
        binary = kexec_binary()
        if binary is None:
            return BackendName.DRY_RUN, (
                "the kernel has no kexec_file_load (ENOSYS) and no kexec binary is installed"
            )
        return (
            BackendName.KEXEC_TOOLS,
            f"the kernel has no kexec_file_load (ENOSYS); {binary} loads",
        )
    if has_file_load is None and not _own_loader(machine):
        # not probed (kernel.kexec_load_limit_reboot is set: a probe would use up a load):
        # kdumpd has no loader of its own here and kexec_file_load may well be missing
        # (Debian's ppc64el kernels); the distribution's kexec loads with kexec_load
        # unless KEXEC_ARGS asks for -s, so it is the choice that loads either way
        binary = kexec_binary()
        if binary is not None:
            return BackendName.KEXEC_TOOLS, (
                f"kexec_file_load not probed (a load limit is set) and kdumpd has no loader "
                f"of its own for {machine}; {binary} loads"
            )
    hotplug = crash_hotplug_file(root)
    if hotplug is not None:
        return BackendName.KERNEL, f"the kernel updates crash images on hotplug ({hotplug} exists)"
    why_not = segment_unavailable(root, machine)
    if why_not is None:
        return BackendName.SEGMENT, "kexec_load of kdumpd's own image (no in-kernel crash hotplug)"
    return BackendName.FILE, f"kexec_file_load without in-kernel crash hotplug ({why_not})"


def _own_loader(machine: str) -> bool:
    """kdumpd builds ``kexec_load`` images itself for ``machine`` (x86_64 today)."""
    from kdumpd.arch import get_arch
    from kdumpd.core.errors import KdumpdError

    try:
        return get_arch(machine).image_builder() is not None
    except KdumpdError:
        return False


def segment_unavailable(root: Sysroot, machine: str | None = None) -> str | None:
    """Why the ``segment`` back-end cannot run here, or None when it can."""
    import importlib

    from kdumpd.arch import get_arch
    from kdumpd.core.errors import KdumpdError

    machine = machine or platform.machine()
    try:
        if get_arch(machine).image_builder() is None:
            return f"no kexec_load image builder for {machine}"
    except KdumpdError:
        return f"no kexec_load image builder for {machine}"
    try:
        lockdown = root.read_value(LOCKDOWN) or ""
        disabled = root.read_value(KEXEC_LOAD_DISABLED) or "0"
    except InputError:
        lockdown, disabled = "", "0"
    if "[" in lockdown and "[none]" not in lockdown:
        return "kernel lockdown refuses kexec_load"
    if disabled != "0":
        return "kernel.kexec_load_disabled is set"
    try:
        module = importlib.import_module(f"kdumpd.arch.{machine}.purgatory")
        module.purgatory_blob()
    except (ImportError, KdumpdError, OSError) as err:
        return f"purgatory not available: {err}"
    return None


def make_backend(
    name: str,
    settings: Settings,
    syscalls_factory: Callable[[], KexecSyscalls] | None = None,
) -> Backend:
    if name == BackendName.DRY_RUN:
        return DryRunBackend(settings.state_dir, keep=KEEP_LOADS)
    if syscalls_factory is None:
        from kdumpd.system.kexec import LinuxKexec

        syscalls_factory = LinuxKexec
    k = settings.kexec
    files = default_files(
        settings.sysroot, kernel=k.kernel, initrd=k.initrd, cmdline=k.cmdline, append=k.append
    )
    factory = LOADERS.get(name)
    if factory is None:
        raise ValueError(f"unknown backend {name!r}")
    return factory(syscalls_factory, files, settings)


def _file(syscalls: Callable[[], KexecSyscalls], files: KexecFiles, settings: Settings) -> Backend:
    return FileBackend(syscalls(), files, settings.sysroot)


def _kernel(
    syscalls: Callable[[], KexecSyscalls], files: KexecFiles, settings: Settings
) -> Backend:
    return KernelBackend(FileBackend(syscalls(), files, settings.sysroot), settings.sysroot)


def _kexec_tools(
    syscalls: Callable[[], KexecSyscalls], files: KexecFiles, settings: Settings
) -> Backend:
    # no syscall of ours: the kexec binary makes it (so no LinuxKexec, which needs a
    # kexec_file_load syscall number)
    return KexecToolsBackend(files, settings.sysroot, kexec_args=read_kexec_args(settings.sysroot))


def _segment(
    syscalls: Callable[[], KexecSyscalls], files: KexecFiles, settings: Settings
) -> Backend:
    return SegmentBackend(syscalls(), files, settings.sysroot)


#: Back-end name -> factory for every back-end that loads through kexec (``dry-run``
#: is made above); :data:`kdumpd.daemon.backends.BACKEND_NAMES` lists the same names.
LOADERS: dict[str, Callable[[Callable[[], KexecSyscalls], KexecFiles, Settings], Backend]] = {
    BackendName.FILE: _file,
    BackendName.KERNEL: _kernel,
    BackendName.KEXEC_TOOLS: _kexec_tools,
    BackendName.SEGMENT: _segment,
}
assert set(BACKEND_NAMES) == {BackendName.DRY_RUN, *LOADERS}


def carry_last_good(old: Backend, new: Backend) -> None:
    """Keep the inputs that last loaded, so a bad new kernel can fall back to them."""
    src = getattr(old, "loader", old)
    dst = getattr(new, "loader", new)
    if isinstance(src, FileBackend) and isinstance(dst, FileBackend):
        dst.last_good = src.last_good
    if isinstance(old, SegmentBackend) and isinstance(new, SegmentBackend):
        new.last_good = old.last_good
    if isinstance(old, KernelBackend) and isinstance(new, KernelBackend):
        new.own_file_load = old.own_file_load
    if isinstance(old, KexecToolsBackend) and isinstance(new, KexecToolsBackend):
        new.last_good = old.last_good
        new.own_hotplug_load = old.own_hotplug_load
        new.tool = old.tool
