"""The kexec syscalls through ctypes, with errno mapping.

Only ``kexec_file_load(2)`` is used so far: the kernel verifies, places and (for
crash images) builds the elfcorehdr itself, and marks the image hotplug-capable
(kernel ≥ 6.6, ``image->file_mode``).  The segment-level ``kexec_load(2)`` arrives
with the purgatory-digest backend; its syscall belongs here too.

Everything that talks to the kernel goes through a :class:`KexecSyscalls` object, so
tests pass a fake that raises chosen errnos instead of monkey-patching.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from typing import Protocol

from kdumpd.core.errors import InputError, KdumpdError, UnsupportedError

# include/uapi/linux/kexec.h
KEXEC_FILE_UNLOAD = 0x1
KEXEC_FILE_ON_CRASH = 0x2
KEXEC_FILE_NO_INITRAMFS = 0x4

# arch/*/entry/syscalls: kexec_file_load
SYS_KEXEC_FILE_LOAD = {
    "x86_64": 320,
    "aarch64": 294,
    "ppc64le": 382,
    "ppc64": 382,
    "s390x": 381,
    "riscv64": 294,
}


class KexecError(KdumpdError):
    """A kexec syscall failed; ``errno`` is the raw value, the message names it."""

    def __init__(self, op: str, err: int, detail: str = "") -> None:
        self.op = op
        self.errno = err
        name = errno.errorcode.get(err, f"errno {err}")
        text = f"{op}: {name} ({os.strerror(err)})"
        if detail:
            text += f": {detail}"
        super().__init__(text)

    @property
    def errno_name(self) -> str:
        return errno.errorcode.get(self.errno, str(self.errno))


class KexecSyscalls(Protocol):
    def file_load(self, kernel_fd: int, initrd_fd: int, cmdline: bytes, flags: int) -> None:
        """``kexec_file_load(kernel_fd, initrd_fd, len(cmdline)+1, cmdline, flags)``;
        raises :class:`KexecError` on failure."""
        ...


class LinuxKexec:
    """The real syscalls via ``libc.syscall``."""

    def __init__(self, machine: str | None = None) -> None:
        self.machine = machine or platform.machine()
        nr = SYS_KEXEC_FILE_LOAD.get(self.machine)
        if nr is None:
            raise UnsupportedError(f"kexec_file_load: no syscall number known for {self.machine}")
        self._nr = nr
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = self._libc.syscall
        self._syscall.restype = ctypes.c_long

    def file_load(self, kernel_fd: int, initrd_fd: int, cmdline: bytes, flags: int) -> None:
        buf = ctypes.create_string_buffer(cmdline)  # NUL-terminated
        ret = self._syscall(
            ctypes.c_long(self._nr),
            ctypes.c_int(kernel_fd),
            ctypes.c_int(initrd_fd),
            ctypes.c_ulong(len(cmdline) + 1),
            buf,
            ctypes.c_ulong(flags),
        )
        if ret != 0:
            err = ctypes.get_errno()
            if err == errno.ENOSYS:
                raise UnsupportedError(
                    "kexec_file_load: the running kernel has no kexec_file_load "
                    "(CONFIG_KEXEC_FILE=n); use --backend dry-run"
                )
            raise KexecError("kexec_file_load", err)


# arch/x86/kernel/kexec-bzimage64.c: for a crash image the kernel prepends
# "elfcorehdr=0x%lx " to the command line and refuses (EINVAL) when
# ``cmdline_len + MAX_ELFCOREHDR_STR_LEN > header->cmdline_size``, where cmdline_len
# is the length userspace passed, terminating NUL included.  It checks this only
# after kexec_file_load() has freed the old crash image, so we check first.
MAX_ELFCOREHDR_STR_LEN = 30
# With dm-crypt keys for the capture kernel (configfs crash_dm_crypt_keys, 6.15+) it
# also prepends "dmcryptkeys=0x%lx " and checks for this much more.
MAX_DMCRYPTKEYS_STR_LEN = 31
# Documentation/arch/x86/boot.rst: the real-mode setup header.
_HDRS_OFFSET = 0x202  # "HdrS"
_VERSION_OFFSET = 0x206  # u16 boot protocol version
_CMDLINE_SIZE_OFFSET = 0x238  # u32 cmdline_size, protocol >= 2.06
_SETUP_HEADER_END = 0x240
_PRE_206_CMDLINE_SIZE = 255  # "up to 2.05: 255 characters" (excluding the NUL)


def bzimage_cmdline_size(header: bytes) -> int | None:
    """The longest command line (bytes incl. the NUL) a bzImage accepts, from its setup
    header; None when ``header`` is not a bzImage (arm64 Image, ELF, PE, ...)."""
    if len(header) < _VERSION_OFFSET + 2 or header[_HDRS_OFFSET : _HDRS_OFFSET + 4] != b"HdrS":
        return None
    (version,) = struct.unpack_from("<H", header, _VERSION_OFFSET)
    if version >= 0x0206 and len(header) >= _CMDLINE_SIZE_OFFSET + 4:
        (size,) = struct.unpack_from("<I", header, _CMDLINE_SIZE_OFFSET)
        return int(size)
    return _PRE_206_CMDLINE_SIZE + 1


def check_crash_cmdline(kernel: str, header: bytes, cmdline: str, reserve: int = 0) -> None:
    """Raise InputError when the kernel would reject ``cmdline`` for a crash load
    (``reserve``: more bytes the kernel prepends, e.g. for dmcryptkeys=)."""
    limit = bzimage_cmdline_size(header)
    if limit is None:
        return
    margin = MAX_ELFCOREHDR_STR_LEN + reserve
    if len(cmdline.encode()) + 1 + margin > limit:
        what = "elfcorehdr=" + (" and dmcryptkeys=" if reserve else "")
        raise InputError(
            "kexec cmdline",
            f"{len(cmdline.encode())} bytes; {kernel} accepts at most "
            f"{limit - 1 - margin} for a crash kernel (cmdline_size {limit} minus {margin} "
            f"for {what} and the NUL); not loading",
        )


def crash_file_load(
    sys: KexecSyscalls, kernel: str, initrd: str | None, cmdline: str, *, reserve: int = 0
) -> None:
    """Load a crash kernel from files (one syscall; the kernel swaps the image inside it).

    Everything the kernel would reject only after freeing the old crash image is
    checked before the syscall (raising :class:`InputError`, the old image stays):
    the kernel and initrd must open and read, the command line must fit."""
    flags = KEXEC_FILE_ON_CRASH
    try:
        kfd = os.open(kernel, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise InputError(kernel, f"cannot open crash kernel: {err.strerror}") from None
    ifd = -1
    try:
        try:
            header = os.pread(kfd, _SETUP_HEADER_END, 0)
        except OSError as err:
            raise InputError(kernel, f"cannot read crash kernel: {err.strerror}") from None
        if not header:
            raise InputError(kernel, "crash kernel is empty")
        check_crash_cmdline(kernel, header, cmdline, reserve)
        if initrd:
            try:
                ifd = os.open(initrd, os.O_RDONLY | os.O_CLOEXEC)
                os.pread(ifd, 1, 0)
            except OSError as err:
                raise InputError(initrd, f"cannot read kdump initrd: {err.strerror}") from None
        else:
            flags |= KEXEC_FILE_NO_INITRAMFS
        sys.file_load(kfd, ifd, cmdline.encode(), flags)
    finally:
        os.close(kfd)
        if ifd >= 0:
            os.close(ifd)


def crash_file_unload(sys: KexecSyscalls) -> None:
    sys.file_load(-1, -1, b"", KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH)


# Flags kexec_file_load(2) accepts on no kernel: a probe with them is refused with
# EINVAL by the flag check (kernel/kexec_file.c), before the kexec lock is taken and
# before any image is touched, when the syscall exists; ENOSYS when it does not.
_PROBE_FLAGS = 1 << 31


def kexec_file_load_available(machine: str | None = None) -> bool | None:
    """Whether the running kernel has ``kexec_file_load`` (CONFIG_KEXEC_FILE).

    True/False from a side-effect-free probe (invalid flags: EINVAL when it exists,
    ENOSYS when not); None when that cannot tell (no syscall number for the machine,
    or EPERM: not permitted to ask)."""
    machine = machine or platform.machine()
    nr = SYS_KEXEC_FILE_LOAD.get(machine)
    if nr is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    buf = ctypes.create_string_buffer(b"")
    ret = syscall(
        ctypes.c_long(nr),
        ctypes.c_int(-1),
        ctypes.c_int(-1),
        ctypes.c_ulong(1),
        buf,
        ctypes.c_ulong(_PROBE_FLAGS),
    )
    if ret == 0:  # cannot happen with these flags; say "exists" rather than guess
        return True
    err = ctypes.get_errno()
    if err == errno.ENOSYS:
        return False
    if err == errno.EPERM:
        return None
    return True
