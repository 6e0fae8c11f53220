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
from typing import Protocol

from kdumpd.core.errors import KdumpdError, UnsupportedError

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


def crash_file_load(sys: KexecSyscalls, kernel: str, initrd: str | None, cmdline: str) -> None:
    """Load a crash kernel from files (one syscall; the kernel swaps the image inside it)."""
    flags = KEXEC_FILE_ON_CRASH
    try:
        kfd = os.open(kernel, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise KdumpdError(f"{kernel}: cannot open crash kernel: {err.strerror}") from None
    ifd = -1
    try:
        if initrd:
            try:
                ifd = os.open(initrd, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as err:
                raise KdumpdError(f"{initrd}: cannot open kdump initrd: {err.strerror}") from None
        else:
            flags |= KEXEC_FILE_NO_INITRAMFS
        sys.file_load(kfd, ifd, cmdline.encode(), flags)
    finally:
        os.close(kfd)
        if ifd >= 0:
            os.close(ifd)


def crash_file_unload(sys: KexecSyscalls) -> None:
    sys.file_load(-1, -1, b"", KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH)
