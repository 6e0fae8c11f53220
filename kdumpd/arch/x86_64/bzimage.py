"""The x86 bzImage setup header: the one place kdumpd reads it.

Documentation/arch/x86/boot.rst describes the header at file offset 0x1f1 (the
"real-mode kernel header"); arch/x86/boot/header.S writes it.  A kernel kdumpd can
load itself with ``kexec_load`` must be a 64-bit relocatable bzImage that may live
above 4 GiB and speaks boot protocol 2.12 or later:

* ``boot_flag`` 0xAA55 at 0x1fe and ``"HdrS"`` at 0x202;
* ``version`` >= 0x020c at 0x206;
* ``xloadflags`` (0x236) with ``XLF_KERNEL_64`` (a 64-bit entry at payload + 0x200)
  and ``XLF_CAN_BE_LOADED_ABOVE_4G``, which header.S only sets for relocatable
  x86_64 builds, and ``relocatable_kernel`` (0x234) set;
* ``loadflags`` (0x211) with ``LOADED_HIGH``.

Other fields used: ``setup_sects`` (0x1f1; 0 means 4) places the protected-mode
payload at ``(setup_sects + 1) * 512``; ``kernel_alignment`` (0x230),
``pref_address`` (0x258) and ``init_size`` (0x260) say where the payload may sit and
how much memory the decompressor needs; ``cmdline_size`` (0x238) bounds the command
line: the most characters it may have, the terminating NUL not counted (255 before
protocol 2.06, which added the field).  The setup header ends at
``0x202 + byte[0x201]`` (the short jump at 0x200 jumps over it); that range is what a
loader copies into boot_params.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kdumpd.core.errors import InputError

SETUP_HEADER_START = 0x1F1
#: Bytes to read to see the whole setup header of any kernel (header end <= 0x281).
HEADER_READ = 0x400
BOOT_FLAG = 0xAA55
HDRS = b"HdrS"
MIN_PROTOCOL = 0x020C

LOADED_HIGH = 0x01
XLF_KERNEL_64 = 1 << 0
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1
XLF_EFI_KEXEC = 1 << 4
XLF_5LEVEL = 1 << 5

#: Offset of the 64-bit entry point inside the protected-mode payload.
ENTRY64_OFFSET = 0x200

_PRE_206_CMDLINE_SIZE = 255  # protocol < 2.06: 255 characters (+ NUL)


@dataclass(frozen=True, slots=True)
class SetupHeader:
    """The fields of a bzImage setup header kdumpd uses."""

    setup_sects: int
    boot_flag: int
    version: int
    loadflags: int
    kernel_alignment: int
    relocatable: bool
    xloadflags: int
    cmdline_size: int  # characters, terminating NUL not included
    pref_address: int
    init_size: int
    header_end: int  # 0x202 + byte[0x201]

    @property
    def payload_offset(self) -> int:
        return ((self.setup_sects or 4) + 1) * 512


def cmdline_size(header: bytes | bytearray | memoryview) -> int | None:
    """The longest command line a bzImage accepts, in bytes without the terminating
    NUL (boot protocol ``cmdline_size``); None when ``header`` is not a bzImage (arm64
    Image, ELF, PE, ...).  Any protocol version."""
    if len(header) < 0x208 or bytes(header[0x202:0x206]) != HDRS:
        return None
    (version,) = struct.unpack_from("<H", header, 0x206)
    if version >= 0x0206 and len(header) >= 0x23C:
        (size,) = struct.unpack_from("<I", header, 0x238)
        return int(size)
    return _PRE_206_CMDLINE_SIZE


def init_size(header: bytes | bytearray | memoryview) -> int | None:
    """``init_size`` (the memory the kernel needs from its load address) of a bzImage
    speaking protocol 2.10 or later; None for anything else."""
    if len(header) < 0x264 or bytes(header[0x202:0x206]) != HDRS:
        return None
    (version,) = struct.unpack_from("<H", header, 0x206)
    if version < 0x020A:
        return None
    (size,) = struct.unpack_from("<I", header, 0x260)
    return int(size)


def is_bzimage(header: bytes | bytearray | memoryview) -> bool:
    return len(header) >= 0x206 and bytes(header[0x202:0x206]) == HDRS


def read_setup_header(data: bytes | bytearray | memoryview, name: str) -> SetupHeader:
    """Parse and check the setup header of a kernel ``kexec_load`` can place itself.

    ``data`` is the file (at least :data:`HEADER_READ` bytes of it); ``name`` names it
    in the one-line :class:`InputError` for a file that is not such a kernel."""

    def bad(problem: str) -> InputError:
        return InputError(name, f"not a 64-bit relocatable bzImage: {problem}")

    if len(data) < 0x270:
        raise bad(f"{len(data)} bytes is too short for a setup header")
    (boot_flag,) = struct.unpack_from("<H", data, 0x1FE)
    if boot_flag != BOOT_FLAG:
        raise bad(f"boot flag {boot_flag:#06x}, expected 0xaa55")
    if bytes(data[0x202:0x206]) != HDRS:
        raise bad('no "HdrS" signature at 0x202')
    (version,) = struct.unpack_from("<H", data, 0x206)
    if version < MIN_PROTOCOL:
        raise bad(f"boot protocol {version >> 8}.{version & 0xFF:02d}, need 2.12 or later")
    setup_sects = data[0x1F1]
    loadflags = data[0x211]
    (kernel_alignment,) = struct.unpack_from("<I", data, 0x230)
    relocatable = bool(data[0x234])
    (xloadflags,) = struct.unpack_from("<H", data, 0x236)
    (cmdline_sz,) = struct.unpack_from("<I", data, 0x238)
    (pref_address,) = struct.unpack_from("<Q", data, 0x258)
    (init_size,) = struct.unpack_from("<I", data, 0x260)
    header_end = 0x202 + data[0x201]
    if not loadflags & LOADED_HIGH:
        raise bad("LOADED_HIGH is not set")
    if not xloadflags & XLF_KERNEL_64:
        raise bad("no 64-bit entry point (XLF_KERNEL_64)")
    if not xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G:
        raise bad("cannot be loaded above 4 GiB (XLF_CAN_BE_LOADED_ABOVE_4G)")
    if not relocatable:
        raise bad("relocatable_kernel is 0")
    if kernel_alignment == 0 or kernel_alignment & (kernel_alignment - 1):
        raise bad(f"kernel_alignment {kernel_alignment:#x} is not a power of two")
    if init_size == 0:
        raise bad("init_size is 0")
    if not 0x202 < header_end <= 0x290 or header_end < 0x264:
        raise bad(f"setup header end {header_end:#x} is implausible")
    setup = SetupHeader(
        setup_sects=setup_sects,
        boot_flag=boot_flag,
        version=version,
        loadflags=loadflags,
        kernel_alignment=kernel_alignment,
        relocatable=relocatable,
        xloadflags=xloadflags,
        cmdline_size=cmdline_sz,
        pref_address=pref_address,
        init_size=init_size,
        header_end=header_end,
    )
    if setup.payload_offset >= len(data):
        raise bad(f"payload offset {setup.payload_offset:#x} is beyond the end of the file")
    return setup


# arch/x86/kernel/kexec-bzimage64.c: for a crash image the kernel prepends
# "elfcorehdr=0x%lx " to the command line and refuses (EINVAL) when
# ``cmdline_len + MAX_ELFCOREHDR_STR_LEN > header->cmdline_size``, where cmdline_len
# is the length userspace passed, terminating NUL included.  The boot protocol's
# cmdline_size does not count the NUL, so this check is one byte stricter than the
# protocol; this mirrors the kernel's.  The kernel checks it only after
# kexec_file_load() has freed the old crash image, so
# kdumpd.system.kexec.crash_file_load checks first.
MAX_ELFCOREHDR_STR_LEN = 30
# With dm-crypt keys for the capture kernel (configfs crash_dm_crypt_keys, 6.15+) it
# also prepends "dmcryptkeys=0x%lx " and checks for this much more.
MAX_DMCRYPTKEYS_STR_LEN = 31


def check_crash_cmdline(kernel: str, header: bytes, cmdline: str, reserve: int = 0) -> None:
    """Raise InputError when the kernel would reject ``cmdline`` for a crash load
    (``reserve``: more bytes the kernel prepends, e.g. for dmcryptkeys=)."""
    limit = cmdline_size(header)
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
