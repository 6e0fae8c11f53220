"""boot_params ("zero page") and the e820 map for an x86_64 capture kernel.

Built the way the kernel's own ``kexec_file_load`` loader builds them for a crash
image (arch/x86/kernel/kexec-bzimage64.c, arch/x86/kernel/crash.c), field offsets from
arch/x86/include/uapi/asm/bootparam.h and Documentation/arch/x86/zero-page.rst:

* a zeroed 4 KiB page plus the bzImage setup header copied from 0x1f1 up to
  ``0x202 + byte[0x201]`` (the byte at 0x1ef, ``sentinel``, is never copied: a
  non-zero sentinel makes the kernel wipe fields a broken loader left behind);
* ``type_of_loader`` 0xD0 (kexec), ``loadflags`` 0 (no heap, no quiet), no
  ``code32_start`` change;
* ``cmd_line_ptr`` / ``ext_cmd_line_ptr`` (0x0c8) and ``ramdisk_image`` /
  ``ramdisk_size`` with their ``ext_`` high halves (0x0c0 / 0x0c4);
* ``acpi_rsdp_addr`` (0x070) from the running kernel's boot_params: the capture kernel
  gets no EFI (below) and must still find ACPI;
* ``efi_info`` (0x1c0, 32 bytes) zeroed: the capture kernel boots as a non-EFI kernel
  (no EFI runtime services, no efivars) instead of receiving half an EFI state; see
  docs/design.md "EFI";
* the e820 map of :func:`capture_e820`, up to 128 entries in the page itself
  (``e820_entries`` at 0x1e8, the table at 0x2d0); more go into one
  ``SETUP_E820_EXT`` setup_data node after the command line, in the same segment.

The command line follows the page (offset 4096) and starts with
``elfcorehdr=0x<hex> `` like the kernel's loader writes it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kdumpd.arch.x86_64.bzimage import SETUP_HEADER_START, SetupHeader
from kdumpd.core.errors import InputError
from kdumpd.core.segment import PAGE_SIZE
from kdumpd.core.topology import MemRange, Resource

BOOT_PARAMS_SIZE = 4096
# arch/x86/include/uapi/asm/bootparam.h offsets
ACPI_RSDP_ADDR = 0x070
EXT_RAMDISK_IMAGE = 0x0C0
EXT_RAMDISK_SIZE = 0x0C4
EXT_CMD_LINE_PTR = 0x0C8
EFI_INFO = 0x1C0
EFI_INFO_SIZE = 32
E820_ENTRIES = 0x1E8
SENTINEL = 0x1EF
TYPE_OF_LOADER = 0x210
LOADFLAGS = 0x211
RAMDISK_IMAGE = 0x218
RAMDISK_SIZE = 0x21C
CMD_LINE_PTR = 0x228
SETUP_DATA = 0x250
E820_TABLE = 0x2D0
E820_MAX_ENTRIES_ZEROPAGE = 128
E820_ENTRY = struct.Struct("<QQI")  # addr, size, type (20 bytes, packed)

LOADER_TYPE_KEXEC = 0xD0
# arch/x86/include/uapi/asm/setup_data.h
SETUP_E820_EXT = 1
SETUP_DATA_HEADER = struct.Struct("<QII")  # next, type, len

# e820 types (arch/x86/include/asm/e820/types.h)
E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4

LOW_1M = 1 << 20
#: The ``elfcorehdr=0x%lx `` prefix is at most this long (16 hex digits).
ELFCOREHDR_ARG_MAX = len("elfcorehdr=0x") + 16 + 1


@dataclass(frozen=True, slots=True)
class E820Entry:
    addr: int
    size: int
    type: int

    @property
    def end(self) -> int:
        return self.addr + self.size


def _ranges(iomem: tuple[Resource, ...], name: str) -> list[MemRange]:
    return [MemRange(r.start, r.end) for r in iomem if r.name == name]


def capture_e820(
    iomem: tuple[Resource, ...],
    crash_window: MemRange,
    elfcorehdr: MemRange,
) -> list[E820Entry]:
    """The capture kernel's memory map, in the kernel loader's order (not sorted):

    1. ``System RAM`` below 1 MiB, as RAM (the capture kernel needs it for its
       real-mode trampoline; the first kernel reserved it at boot, so nothing
       there is in use by a crashed kernel's DMA);
    2. ``ACPI Tables`` as ACPI, 3. ``ACPI Non-volatile Storage`` as NVS,
       4. ``Reserved`` as reserved (so the capture kernel keeps its hands off);
    5. the other ``Crash kernel`` ranges (``crashkernel=,low``) as RAM;
    6. ``crash_window`` (``crashk_res``) minus the elfcorehdr segment as RAM;
       pieces smaller than a page are dropped.  The elfcorehdr stays out of the
       capture kernel's RAM because x86 does not reserve it otherwise.
    """
    out: list[E820Entry] = []
    for r in iomem:
        if r.name == "System RAM" and r.start < LOW_1M:
            end = min(r.end, LOW_1M - 1)
            out.append(E820Entry(r.start, end - r.start + 1, E820_RAM))
    for name, kind in (
        ("ACPI Tables", E820_ACPI),
        ("ACPI Non-volatile Storage", E820_NVS),
        ("Reserved", E820_RESERVED),
    ):
        out.extend(E820Entry(r.start, r.size, kind) for r in _ranges(iomem, name))
    for low in _ranges(iomem, "Crash kernel"):
        if low != crash_window:
            out.append(E820Entry(low.start, low.size, E820_RAM))
    pieces = [
        (crash_window.start, elfcorehdr.start - 1),
        (elfcorehdr.end + 1, crash_window.end),
    ]
    for start, end in pieces:
        if end - start + 1 >= PAGE_SIZE:
            out.append(E820Entry(start, end - start + 1, E820_RAM))
    return out


def capture_cmdline(elfcorehdr: int, arguments: str) -> bytes:
    """``elfcorehdr=0x<hex> `` + ``arguments``, NUL-terminated."""
    return f"elfcorehdr={elfcorehdr:#x} {arguments}".encode() + b"\0"


def check_cmdline(setup: SetupHeader, arguments: str, kernel: str) -> None:
    """Raise :class:`InputError` when ``arguments`` plus the ``elfcorehdr=`` prefix do
    not fit the kernel's ``cmdline_size`` (which does not count the NUL)."""
    room = setup.cmdline_size - ELFCOREHDR_ARG_MAX
    if len(arguments.encode()) > room:
        raise InputError(
            kernel,
            f"capture command line of {len(arguments.encode())} bytes; this kernel "
            f"accepts at most {room} besides elfcorehdr= (cmdline_size "
            f"{setup.cmdline_size}); not loading",
        )


def running_rsdp(boot_params: bytes) -> int:
    """``acpi_rsdp_addr`` of the running kernel's boot_params (0 when unknown)."""
    if len(boot_params) < ACPI_RSDP_ADDR + 8:
        return 0
    (addr,) = struct.unpack_from("<Q", boot_params, ACPI_RSDP_ADDR)
    return int(addr)


def boot_params_size(cmdline: bytes, e820: list[E820Entry]) -> int:
    """Bytes of the boot_params segment: the page, the command line and, past 128
    e820 entries, the ``SETUP_E820_EXT`` node (8-byte aligned)."""
    size = BOOT_PARAMS_SIZE + len(cmdline)
    extra = len(e820) - E820_MAX_ENTRIES_ZEROPAGE
    if extra > 0:
        size = (size + 7) // 8 * 8 + SETUP_DATA_HEADER.size + extra * E820_ENTRY.size
    return size


def build_boot_params(
    kernel_file: bytes | bytearray | memoryview,
    setup: SetupHeader,
    *,
    mem: int,
    cmdline: bytes,
    initrd: tuple[int, int] | None,
    e820: list[E820Entry],
    acpi_rsdp: int,
) -> bytearray:
    """The boot_params segment's buffer for physical address ``mem``: the zero page,
    the command line at ``mem + 4096`` and, when needed, the e820 extension."""
    buf = bytearray(boot_params_size(cmdline, e820))
    buf[SETUP_HEADER_START : setup.header_end] = kernel_file[SETUP_HEADER_START : setup.header_end]
    buf[TYPE_OF_LOADER] = LOADER_TYPE_KEXEC
    buf[LOADFLAGS] = 0
    cmd = mem + BOOT_PARAMS_SIZE
    struct.pack_into("<I", buf, CMD_LINE_PTR, cmd & 0xFFFFFFFF)
    struct.pack_into("<I", buf, EXT_CMD_LINE_PTR, cmd >> 32)
    buf[BOOT_PARAMS_SIZE : BOOT_PARAMS_SIZE + len(cmdline)] = cmdline
    if initrd is not None:
        addr, size = initrd
        struct.pack_into("<I", buf, RAMDISK_IMAGE, addr & 0xFFFFFFFF)
        struct.pack_into("<I", buf, EXT_RAMDISK_IMAGE, addr >> 32)
        struct.pack_into("<I", buf, RAMDISK_SIZE, size & 0xFFFFFFFF)
        struct.pack_into("<I", buf, EXT_RAMDISK_SIZE, size >> 32)
    struct.pack_into("<Q", buf, ACPI_RSDP_ADDR, acpi_rsdp)
    buf[EFI_INFO : EFI_INFO + EFI_INFO_SIZE] = bytes(EFI_INFO_SIZE)
    buf[SENTINEL] = 0
    inline = e820[:E820_MAX_ENTRIES_ZEROPAGE]
    buf[E820_ENTRIES] = len(inline)
    for i, e in enumerate(inline):
        E820_ENTRY.pack_into(buf, E820_TABLE + i * E820_ENTRY.size, e.addr, e.size, e.type)
    rest = e820[E820_MAX_ENTRIES_ZEROPAGE:]
    if rest:
        off = (BOOT_PARAMS_SIZE + len(cmdline) + 7) // 8 * 8
        length = len(rest) * E820_ENTRY.size
        SETUP_DATA_HEADER.pack_into(buf, off, 0, SETUP_E820_EXT, length)
        for i, e in enumerate(rest):
            E820_ENTRY.pack_into(
                buf, off + SETUP_DATA_HEADER.size + i * E820_ENTRY.size, e.addr, e.size, e.type
            )
        struct.pack_into("<Q", buf, SETUP_DATA, mem + off)
    else:
        struct.pack_into("<Q", buf, SETUP_DATA, 0)
    return buf
