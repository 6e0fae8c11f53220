"""The kexec files in sysfs and procfs: what the kernel can do and what is loaded.

Which reads take the kexec lock matters: the ``show()`` of ``crash_hotplug`` and
``kexec_crash_size`` takes ``kexec_trylock()``, and a kernel hotplug update that finds
the lock taken skips its elfcorehdr update (docs/kernel-interfaces.md §2).
``kexec_crash_loaded`` and a stat of any file take no lock, so only those are used
in the burst path.
"""

from __future__ import annotations

import re
from pathlib import Path

from kdumpd.core.errors import InputError
from kdumpd.core.topology import KernelCapabilities
from kdumpd.system.sysroot import Opener, Sysroot, one_line, parse_bool01, parse_dec

__all__ = [
    "CPU_CRASH_HOTPLUG",
    "CRASH_ELFCOREHDR_SIZE",
    "KEXEC_CRASH_LOADED",
    "KEXEC_CRASH_SIZE",
    "KEXEC_LOAD_LIMIT_PANIC",
    "KEXEC_LOAD_LIMIT_REBOOT",
    "MEMORY_CRASH_HOTPLUG",
    "crash_hotplug_file",
    "crash_image_loaded",
    "kexec_present",
    "read_capabilities",
    "read_crash_hotplug",
    "read_crash_loaded",
    "read_crash_size",
    "read_load_limit",
    "read_load_limit_panic",
]

CPU_CRASH_HOTPLUG = "/sys/devices/system/cpu/crash_hotplug"
MEMORY_CRASH_HOTPLUG = "/sys/devices/system/memory/crash_hotplug"
# Each value under its classic name and the newer /sys/kernel/kexec/ name (the
# classic names stay as links; the classic one wins when both exist).
#: ``!!kexec_crash_image``, read without the kexec lock.
KEXEC_CRASH_LOADED = ("/sys/kernel/kexec_crash_loaded", "/sys/kernel/kexec/crash_loaded")
#: The crash reservation's size; the read takes the kexec lock (EBUSY during a load).
KEXEC_CRASH_SIZE = ("/sys/kernel/kexec_crash_size", "/sys/kernel/kexec/crash_size")
#: The elfcorehdr size the kernel reserves for hotplug updates (CONFIG_CRASH_HOTPLUG).
CRASH_ELFCOREHDR_SIZE = (
    "/sys/kernel/crash_elfcorehdr_size",
    "/sys/kernel/kexec/crash_elfcorehdr_size",
)
#: How many more crash-image loads the kernel accepts this boot; -1 = no limit.  Newer
#: kernels only (kernel/kexec_core.c, the kexec_load_limit_* sysctls); absent on 6.1.
KEXEC_LOAD_LIMIT_PANIC = "/proc/sys/kernel/kexec_load_limit_panic"
#: The same for loads of a kernel to reboot into (no crash flag).
KEXEC_LOAD_LIMIT_REBOOT = "/proc/sys/kernel/kexec_load_limit_reboot"
OSRELEASE = "/proc/sys/kernel/osrelease"
LOCKDOWN = "/sys/kernel/security/lockdown"

_LOCKDOWN = re.compile(r"\[(\w+)\]")


def _flag(root: Sysroot, *paths: str) -> bool | None:
    found = root.first(*paths)
    return None if found is None else parse_bool01(one_line(found[1], found[0]), found[0])


def _number(root: Sysroot, *paths: str, bits: int = 64) -> int | None:
    found = root.first(*paths)
    return None if found is None else parse_dec(found[1], found[0], bits=bits)


def read_capabilities(
    sysroot: str | Path | Sysroot = "/", *, opener: Opener | None = None
) -> KernelCapabilities:
    """What the kernel below ``sysroot`` can do; absent files are ``None``.

    Every call reads ``crash_hotplug`` and ``kexec_crash_size`` afresh and so takes
    the kexec lock: callers in the burst path keep the first result
    (:class:`~kdumpd.system.topologyreader.TopologyReader` does).  ``opener`` replaces
    ``open(path, "rb")`` (tests make a read fail the way ``kexec_crash_size`` fails
    during a load).
    """
    root = sysroot if isinstance(sysroot, Sysroot) else Sysroot(sysroot, opener)
    release_text = root.read(OSRELEASE)
    release = None if release_text is None else one_line(release_text, OSRELEASE)
    lockdown: str | None = None
    lockdown_text = root.read(LOCKDOWN)
    if lockdown_text is not None:
        # "none [integrity] confidentiality": the active mode is the bracketed word.
        m = _LOCKDOWN.search(one_line(lockdown_text, LOCKDOWN))
        if m is None:
            raise InputError(LOCKDOWN, "no [active] mode in brackets", 1)
        lockdown = m.group(1)
    return KernelCapabilities(
        release=release,
        cpu_crash_hotplug=_flag(root, CPU_CRASH_HOTPLUG),
        memory_crash_hotplug=_flag(root, MEMORY_CRASH_HOTPLUG),
        # printed with "%u": an unsigned int
        crash_elfcorehdr_size=_number(root, *CRASH_ELFCOREHDR_SIZE, bits=32),
        kexec_crash_loaded=_flag(root, *KEXEC_CRASH_LOADED),
        kexec_crash_size=_number(root, *KEXEC_CRASH_SIZE),
        lockdown=lockdown,
    )


def read_crash_loaded(sysroot: str | Path | Sysroot = "/") -> bool | None:
    """Is a crash image loaded?  ``None`` when the kernel has no such file.

    Lock-free: status queries and post-load checks may ask as often as they like."""
    return _flag(Sysroot.of(sysroot), *KEXEC_CRASH_LOADED)


def crash_image_loaded(sysroot: str | Path | Sysroot = "/") -> bool:
    """``kexec_crash_loaded`` reads 1; False when it reads 0, is missing or unreadable.
    Lock-free: the one kexec file the burst path reads."""
    try:
        return read_crash_loaded(sysroot) is True
    except InputError:
        return False


def kexec_present(sysroot: str | Path | Sysroot = "/") -> bool:
    """The kernel has kexec (``kexec_crash_loaded`` exists; a stat)."""
    root = Sysroot.of(sysroot)
    return any(root.exists(p) for p in KEXEC_CRASH_LOADED)


def read_crash_size(sysroot: str | Path | Sysroot = "/") -> int | None:
    """The crash reservation in bytes; ``None`` when the file is missing or busy.
    Takes the kexec lock: never in the burst path."""
    return _number(Sysroot.of(sysroot), *KEXEC_CRASH_SIZE)


def read_load_limit_panic(sysroot: str | Path | Sysroot = "/") -> int | None:
    """``kexec_load_limit_panic``: the crash-image loads (``kexec_load`` and
    ``kexec_file_load`` alike) the kernel still accepts, ``-1`` without a limit;
    ``None`` when the kernel has no such sysctl or it cannot be read.  No kexec lock."""
    return read_load_limit(sysroot, KEXEC_LOAD_LIMIT_PANIC)


def read_load_limit(sysroot: str | Path | Sysroot, path: str) -> int | None:
    """One ``kexec_load_limit_*`` sysctl: ``-1`` without a limit, ``None`` when absent
    or unreadable."""
    text = Sysroot.of(sysroot).read_value(path)
    if text is None:
        return None
    try:
        value = int(text, 10)
    except ValueError:
        return None
    return value if value >= -1 else None


def crash_hotplug_file(sysroot: str | Path | Sysroot = "/") -> str | None:
    """The first CONFIG_CRASH_HOTPLUG file that exists (a stat: no kexec lock), or
    ``None`` on a kernel without in-kernel crash hotplug (before 6.6)."""
    root = Sysroot.of(sysroot)
    for p in (MEMORY_CRASH_HOTPLUG, CPU_CRASH_HOTPLUG, CRASH_ELFCOREHDR_SIZE[0]):
        if root.exists(p):
            return p
    return None


def read_crash_hotplug(sysroot: str | Path | Sysroot = "/") -> bool | None:
    """Both ``crash_hotplug`` files that exist read 1; ``None`` when neither can be
    read.  Takes the kexec lock, and reads 0 while it is contended: ask rarely."""
    root = Sysroot.of(sysroot)
    flags: list[bool] = []
    for path in (CPU_CRASH_HOTPLUG, MEMORY_CRASH_HOTPLUG):
        try:
            data = root.read_bytes(path)
        except InputError:
            continue
        if data is not None:
            flags.append(data.strip() == b"1")
    return all(flags) if flags else None
