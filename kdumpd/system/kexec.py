"""The kexec syscalls through ctypes, with errno mapping.

``kexec_file_load(2)``: the kernel verifies, places and (for crash images) builds the
elfcorehdr itself, and marks the image hotplug-capable (kernel ≥ 6.6,
``image->file_mode``).  ``kexec_load(2)``: kdumpd hands the kernel every segment it
built and placed itself (the ``segment`` back-end); the kernel copies them into the
crash reservation and checks only bounds, alignment and overlap.

Everything that talks to the kernel goes through a :class:`KexecSyscalls` object, so
tests pass a fake that raises chosen errnos instead of monkey-patching.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import mmap
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from kdumpd.arch.x86_64.bzimage import HEADER_READ, check_crash_cmdline
from kdumpd.core.errors import InputError, KdumpdError, UnsupportedError
from kdumpd.system.kexecsysfs import KEXEC_LOAD_LIMIT_REBOOT, read_load_limit
from kdumpd.system.sysroot import Sysroot

log = logging.getLogger("kdumpd.system.kexec")

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


# include/uapi/linux/kexec.h: kexec_load flags
KEXEC_ON_CRASH = 0x1
KEXEC_UPDATE_ELFCOREHDR = 0x4
KEXEC_SEGMENT_MAX = 16

# arch/*/entry/syscalls: kexec_load
SYS_KEXEC_LOAD = {
    "x86_64": 246,
    "ppc64le": 268,
    "ppc64": 268,
    "aarch64": 104,
    "riscv64": 104,
    "s390x": 277,
}

#: One kexec segment for :meth:`KexecSyscalls.load`: (buffer, physical mem, memsz).
SegmentSpec = tuple[bytes | bytearray | memoryview, int, int]


class KexecSyscalls(Protocol):
    def file_load(self, kernel_fd: int, initrd_fd: int, cmdline: bytes, flags: int) -> None:
        """``kexec_file_load(kernel_fd, initrd_fd, len(cmdline)+1, cmdline, flags)``;
        raises :class:`KexecError` on failure."""
        ...

    def load(self, entry: int, segments: Sequence[SegmentSpec], flags: int) -> None:
        """``kexec_load(entry, nr, segments, flags)``; raises :class:`KexecError`."""
        ...


class _KexecSegment(ctypes.Structure):
    # struct kexec_segment { const void *buf; size_t bufsz; const void *mem; size_t memsz; }
    _fields_ = (
        ("buf", ctypes.c_void_p),
        ("bufsz", ctypes.c_size_t),
        ("mem", ctypes.c_void_p),
        ("memsz", ctypes.c_size_t),
    )


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
        self._mlock = self._libc.mlock
        self._mlock_warned: set[tuple[str, int]] = set()

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

    def load(self, entry: int, segments: Sequence[SegmentSpec], flags: int) -> None:
        """The buffers are referenced in place, never copied: each is held through the
        buffer protocol for the duration of the call (so nothing can resize, close or
        free it) and locked in memory (``mlock``) before the syscall, so the kernel's
        per-page copy, which runs after the old crash image is freed, finds every page
        resident instead of reading it from disk.

        ``mlock`` needs ``RLIMIT_MEMLOCK`` to cover the image (the shipped unit sets
        ``LimitMEMLOCK=infinity``) or CAP_IPC_LOCK.  When it fails the load still goes
        ahead (a slower copy beats no image), with one warning per file and errno: the
        pages the daemon dropped after the last load are then read back from disk
        inside the syscall, while no crash image is loaded."""
        nr = SYS_KEXEC_LOAD.get(self.machine)
        if nr is None:
            raise UnsupportedError(f"kexec_load: no syscall number known for {self.machine}")
        if len(segments) > KEXEC_SEGMENT_MAX:
            raise KexecError("kexec_load", errno.EINVAL, f"{len(segments)} segments")
        array = (_KexecSegment * len(segments))()
        held: list[_PyBuffer] = []
        locked: list[tuple[int, int]] = []
        try:
            for i, (buf, mem, memsz) in enumerate(segments):
                view = _PyBuffer()
                if _get_buffer(ctypes.py_object(buf), ctypes.byref(view), 0) != 0:
                    raise TypeError(f"segment {i}: not a buffer")
                held.append(view)
                addr, n = view.buf or 0, view.len
                if n:
                    if self._mlock(ctypes.c_void_p(addr), ctypes.c_size_t(n)) == 0:
                        locked.append((addr, n))
                    else:
                        self._warn_mlock(buf, i, n, ctypes.get_errno())
                array[i] = _KexecSegment(addr, n, mem, memsz)
            ret = self._syscall(
                ctypes.c_long(nr),
                ctypes.c_ulong(entry),
                ctypes.c_ulong(len(segments)),
                array,
                ctypes.c_ulong(flags),
            )
            code = ctypes.get_errno() if ret != 0 else 0
        finally:
            for addr, n in locked:
                self._libc.munlock(ctypes.c_void_p(addr), ctypes.c_size_t(n))
            for view in held:
                _release_buffer(ctypes.byref(view))
        if ret != 0:
            if code == errno.ENOSYS:
                raise UnsupportedError(
                    "kexec_load: the running kernel has no kexec_load (CONFIG_KEXEC=n); "
                    "use the file back-end"
                )
            raise KexecError("kexec_load", code)

    def _warn_mlock(self, buf: object, index: int, size: int, err: int) -> None:
        name = getattr(getattr(buf, "obj", None), "path", None) or f"segment {index}"
        if (name, err) in self._mlock_warned:
            return
        self._mlock_warned.add((name, err))
        log.warning(
            "mlock of %s (%d bytes) failed: %s (%s); loading anyway, but the kernel's copy "
            "may read its pages from disk while no crash image is loaded (raise "
            "RLIMIT_MEMLOCK: LimitMEMLOCK=infinity in the unit)",
            name,
            size,
            errno.errorcode.get(err, f"errno {err}"),
            os.strerror(err),
        )


class _PathMap(mmap.mmap):
    """A read-only file mapping that knows its path (for the mlock warning)."""

    path = ""


class _PyBuffer(ctypes.Structure):
    # Py_buffer (part of the stable ABI since Python 3.11)
    _fields_ = (
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.c_void_p, ctypes.c_int)
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (ctypes.c_void_p,)
_release_buffer.restype = None


FileIdentity = tuple[int, int, int, int, int]


def identity_of(st: os.stat_result) -> FileIdentity:
    """Device, inode, size, mtime and ctime: changes when a file is replaced,
    rewritten in place or truncated."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_identity(path: str) -> FileIdentity | None:
    try:
        return identity_of(os.stat(path))
    except OSError:
        return None


class MappedFile:
    """A file mapped read-only and shared with the page cache, so a segment buffer
    needs no anonymous copy: :attr:`view` is a read-only ``memoryview``.

    The mapping cannot be closed while a segment still exports it (``mmap`` refuses);
    :meth:`close` then leaves it to the garbage collector.  :meth:`release_pages` drops
    the mapping's page-table entries after a load (the pages stay in the page cache),
    so the daemon's resident set does not keep the kernel and initrd between bursts;
    the next load faults them back in (``mlock``) before its syscall.  That holds
    while ``mlock`` succeeds (``RLIMIT_MEMLOCK``, see :meth:`LinuxKexec.load`);
    otherwise the kernel's copy faults them in from disk inside the syscall.

    The file descriptor stays open with the mapping: :meth:`changed` compares the
    *mapped* inode (size, mtime) now with the one at map time.
    A rewrite in place or a truncation changes it (the mapping then shows other bytes
    than the ones digested); a rename-replacement (a package update) does not: the
    mapping keeps the old inode, whatever the path names now.

    Touching a mapping beyond a truncated end raises SIGBUS, which Python cannot
    catch.  So the daemon never reads the mapping itself: :meth:`pread` and
    :meth:`sha256` read through the descriptor (a short read is a one-line
    :class:`InputError`); only the kernel's copy (``EFAULT``) and ``mlock`` (an error)
    touch the mapping.  They read the page cache in 1 MiB pieces into one buffer, so
    digesting adds no resident copy of the file either."""

    #: Bytes per read while digesting (one reused buffer: no copy of the file).
    CHUNK = 1 << 20

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise InputError(path, f"cannot map: {err.strerror}") from None
        try:
            st = os.fstat(self._fd)
            if st.st_size == 0:
                raise InputError(path, "file is empty")
            self._map = _PathMap(self._fd, 0, access=mmap.ACCESS_READ)
            self._map.path = path
        except OSError as err:
            os.close(self._fd)
            raise InputError(path, f"cannot map: {err.strerror}") from None
        except BaseException:
            os.close(self._fd)
            raise
        self.size = st.st_size
        self.identity = identity_of(st)
        self.view: memoryview = memoryview(self._map)

    def changed(self) -> bool:
        """The mapped inode was rewritten or truncated since it was mapped: its size or
        mtime moved.  The ctime is not compared: a rename over the path, a hard link,
        chmod/chown or a security label move it without touching the bytes, and a
        false alarm here refuses a good image.  So a rewrite that keeps the size and
        lands within one timestamp tick, or one that sets the mtime back, is not seen."""
        try:
            st = os.fstat(self._fd)
        except OSError:
            return True  # closed: nothing says the bytes are the same
        return identity_of(st)[:4] != self.identity[:4]

    def pread(self, size: int, offset: int = 0) -> bytes:
        """Up to ``size`` bytes at ``offset``, read through the descriptor (never
        SIGBUS); shorter when the file is."""
        try:
            return os.pread(self._fd, size, offset)
        except OSError as err:
            raise InputError(self.path, f"cannot read: {err.strerror}") from None

    def sha256(self, offset: int = 0) -> bytes:
        """SHA-256 of bytes ``offset`` to the mapped size, read through the descriptor.
        Raises :class:`InputError` when the file was truncated or changed meanwhile
        (the digest would not describe the mapping)."""
        digest = hashlib.sha256()
        chunk = bytearray(min(self.CHUNK, max(self.size - offset, 1)))
        view = memoryview(chunk)
        pos = offset
        try:
            while pos < self.size:
                want = min(len(chunk), self.size - pos)
                got = os.preadv(self._fd, [view[:want]], pos)
                if got <= 0:
                    break
                digest.update(view[:got])
                pos += got
        except OSError as err:
            raise InputError(self.path, f"cannot read: {err.strerror}") from None
        if pos < self.size or self.changed():
            raise InputError(
                self.path, "changed or truncated while being digested; prepared again next pass"
            )
        return digest.digest()

    def release_pages(self) -> None:
        """Drop this mapping's resident pages from the process (not from the cache)."""
        with contextlib.suppress(OSError, ValueError):
            self._map.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        try:
            self.view.release()
            self._map.close()
        except BufferError:
            pass  # a segment still holds a view; freed with it
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> MappedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
            header = os.pread(kfd, HEADER_READ, 0)
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


# Flags kexec_file_load(2) accepts on no kernel: with them the syscall returns EINVAL
# from its flag check when it exists, ENOSYS when it does not (kernel/sys_ni.c).  The
# flag check comes after kexec_load_permitted() (kernel/kexec_file.c,
# SYSCALL_DEFINE5(kexec_file_load)), which since 6.3 also counts the call against
# kernel.kexec_load_limit_reboot (no crash flag here) when that limit is set; it runs
# before the kexec lock is taken and before any image is touched.
_PROBE_FLAGS = 1 << 31

#: ``syscall(nr, kernel_fd, initrd_fd, cmdline_len, cmdline, flags)`` -> return value;
#: the errno is read with ``ctypes.get_errno()``.
RawSyscall = Callable[..., int]


def kexec_file_load_available(
    machine: str | None = None,
    *,
    sysroot: str | Path | Sysroot = "/",
    syscall: RawSyscall | None = None,
) -> bool | None:
    """Whether the running kernel has ``kexec_file_load`` (CONFIG_KEXEC_FILE).

    True/False from a probe with invalid flags (EINVAL when it exists, ENOSYS when
    not), which changes no image.  It is not free of effects everywhere: the kernel's
    permission check before the flag check uses up one load of
    ``kernel.kexec_load_limit_reboot`` when that limit is set, so then no probe is
    made and the answer is None.  None also when the probe cannot tell (no syscall
    number for the machine, or EPERM: not permitted to ask)."""
    machine = machine or platform.machine()
    nr = SYS_KEXEC_FILE_LOAD.get(machine)
    if nr is None:
        return None
    limit = read_load_limit(sysroot, KEXEC_LOAD_LIMIT_REBOOT)
    if limit is not None and limit != -1:
        log.info(
            "kernel.kexec_load_limit_reboot is %d: not probing kexec_file_load (the "
            "probe would use up one of those loads); assuming it exists",
            limit,
        )
        return None
    if syscall is None:
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
