"""The x86_64 purgatory segment: kdumpd's own blob and the header patched before a load.

The blob (built from ``purgatory/x86_64`` by ``make purgatory`` or ``pip install``)
is a flat, position-independent image with a fixed header at offset 0
(docs/purgatory.md).  This module only reads and patches that header; it does no other
I/O than reading the blob file and imports nothing native.

Header, little-endian (the C side is ``purgatory/x86_64/purgatory.h``; the tests
compare the two with ``offsetof`` from the host-compiled C):

====== ======= ==========================================================
offset size    field
====== ======= ==========================================================
0x000  8       jmp to the code at 0x400 (so the segment never starts with
               ``\\x7fELF`` or the FDT magic)
0x008  8       magic ``b"KDPURG\\x00\\x01"``
0x010  4 + 4   version (1), header size (0x400)
0x018  4 + 4   nregions (<= 15), policy (:class:`Policy`)
0x020  8       boot_params physical address (``%rsi`` at kernel entry)
0x028  8       kernel entry (kernel load address + 0x200); 0 = never jump
0x030  8       8250 UART I/O port base (0 = silent)
0x038  4 + 4   memsz the segment needs (bss and stack included), reserved
0x040  15 x 56 regions: u64 start, u64 len, u8 sha256[32], u32 flags, u32 reserved
====== ======= ==========================================================

A region is the ``bufsz`` bytes kexec copies for one segment; the zero tail up to
``memsz`` is not hashed.  The purgatory segment itself is never a region (its stack is
written at run time).
"""

from __future__ import annotations

import enum
import hashlib
import struct
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from kdumpd.core.errors import KdumpdError
from kdumpd.core.segment import ELF_MAGIC, PAGE_SIZE

__all__ = [
    "DEFAULT_POLICY",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_REGIONS",
    "VERSION",
    "Policy",
    "Purgatory",
    "PurgatoryError",
    "PurgatoryUnavailable",
    "Region",
    "RegionFlag",
    "purgatory_blob",
]

MAGIC = b"KDPURG\x00\x01"
VERSION = 1
HEADER_SIZE = 0x400
MAX_REGIONS = 15
#: A blob (and its memsz) larger than this is not ours: the real one is ~12 KiB.
MAX_MEMSZ = 1 << 20
#: The bytes a flattened device tree starts with (big-endian 0xd00dfeed).
FDT_MAGIC = b"\xd0\x0d\xfe\xed"

# header layout (purgatory.h)
OFF_MAGIC = 0x08
OFF_VERSION = 0x10
OFF_HEADER_SIZE = 0x14
OFF_NREGIONS = 0x18
OFF_POLICY = 0x1C
OFF_BOOT_PARAMS = 0x20
OFF_KERNEL_ENTRY = 0x28
OFF_SERIAL_PORT = 0x30
OFF_MEMSZ = 0x38
OFF_REGIONS = 0x40
REGION_SIZE = 56
# region layout
REGION_OFF_START = 0
REGION_OFF_LEN = 8
REGION_OFF_SHA256 = 16
REGION_OFF_FLAGS = 48

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_REGION = struct.Struct("<QQ32sII")
_U64_MAX = (1 << 64) - 1

#: Where ``make purgatory`` puts the blob in a source checkout (editable installs).
BUILD_DIR_BLOB = Path("build") / "purgatory" / "x86_64" / "purgatory.bin"
PACKAGE_BLOB = "purgatory.bin"


class RegionFlag(enum.IntFlag):
    """How the purgatory checks one region."""

    #: Not checked at all.
    SKIP = 1
    #: Checked for the shape of an ELF64 core header instead of a digest: for an
    #: elfcorehdr a 6.6+ kernel rewrites in place on hotplug.
    ELF_STRUCTURAL = 2


#: A plainly digested region.
NO_FLAGS = RegionFlag(0)


class Policy(enum.IntFlag):
    """What the purgatory does when a region does not check out (it never jumps)."""

    #: Reset the machine (chipset reset at I/O 0xCF9, then a triple fault); without
    #: it the CPU halts forever.
    RESET = 1
    #: Print one line on the UART at the header's serial port first.
    SERIAL = 2


#: Reset and say why on the console.  A machine whose crash image was corrupted cannot
#: take a dump either way; resetting returns it to service at once instead of leaving
#: it hung until a watchdog or an operator notices, and the serial line (which console
#: loggers keep) records that the dump was lost and which region failed.
DEFAULT_POLICY = Policy.RESET | Policy.SERIAL
_POLICY_BITS = int(Policy.RESET | Policy.SERIAL)
_FLAG_BITS = int(RegionFlag.SKIP | RegionFlag.ELF_STRUCTURAL)


class PurgatoryError(KdumpdError):
    """A value given to the patcher cannot go into the header (one line)."""


class PurgatoryUnavailable(KdumpdError):
    """The purgatory blob is missing or is not kdumpd's x86_64 purgatory (one line)."""


class Region(NamedTuple):
    """One region as the header holds it."""

    start: int
    length: int
    sha256: bytes
    flags: RegionFlag


def _repo_build_blob() -> Path:
    # kdumpd/arch/x86_64/purgatory.py -> the checkout root
    return Path(__file__).resolve().parents[3] / BUILD_DIR_BLOB


def purgatory_blob(path: Path | None = None) -> bytes:
    """The built blob: ``path`` if given, else the package's copy (installed wheels),
    else ``build/purgatory/x86_64/purgatory.bin`` of the source checkout.

    Raises :class:`PurgatoryUnavailable` when there is none or it is not a purgatory.
    """
    if path is not None:
        candidates = [path]
    else:
        packaged = resources.files(__package__ or "kdumpd.arch.x86_64") / PACKAGE_BLOB
        candidates = [Path(str(packaged)), _repo_build_blob()]
    for candidate in candidates:
        try:
            blob = candidate.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as err:
            raise PurgatoryUnavailable(
                f"{candidate}: cannot read the purgatory: {err.strerror}"
            ) from err
        if blob[OFF_MAGIC : OFF_MAGIC + len(MAGIC)] != MAGIC:
            raise PurgatoryUnavailable(
                f"{candidate}: not kdumpd's x86_64 purgatory (bad magic); run `make purgatory`"
            )
        return blob
    where = " or ".join(str(c) for c in candidates)
    raise PurgatoryUnavailable(f"x86_64 purgatory not built (no {where}); run `make purgatory`")


def _u64(name: str, value: int) -> int:
    if not isinstance(value, int) or not 0 <= value <= _U64_MAX:
        raise PurgatoryError(f"purgatory {name} {value!r} is not a u64")
    return value


class Purgatory:
    """The purgatory segment's buffer (``bufsz`` bytes), patched in place.

    ``buffer`` is the same ``bytearray`` for the object's life, so a loader can hand
    its address to ``kexec_load`` once and re-patch it on every burst.
    """

    __slots__ = ("_buffer", "_memsz", "_view")
    _buffer: bytearray
    _memsz: int
    _view: memoryview

    def __init__(self, blob: bytes | bytearray | memoryview) -> None:
        data = bytes(blob)
        size = len(data)
        if size < HEADER_SIZE:
            raise PurgatoryUnavailable(
                f"purgatory blob is {size} bytes, shorter than its {HEADER_SIZE}-byte header"
            )
        if data[OFF_MAGIC : OFF_MAGIC + len(MAGIC)] != MAGIC:
            raise PurgatoryUnavailable("purgatory blob has the wrong magic; run `make purgatory`")
        if data.startswith(ELF_MAGIC) or data.startswith(FDT_MAGIC):
            raise PurgatoryUnavailable("purgatory blob starts with an ELF or FDT magic")
        (version,) = _U32.unpack_from(data, OFF_VERSION)
        (header_size,) = _U32.unpack_from(data, OFF_HEADER_SIZE)
        if version != VERSION or header_size != HEADER_SIZE:
            raise PurgatoryUnavailable(
                f"purgatory blob has version {version} header size {header_size:#x}, "
                f"this kdumpd needs version {VERSION} header size {HEADER_SIZE:#x}; "
                "run `make purgatory`"
            )
        (memsz,) = _U32.unpack_from(data, OFF_MEMSZ)
        if not size <= memsz <= MAX_MEMSZ:
            raise PurgatoryUnavailable(
                f"purgatory blob memsz {memsz} is not between its size {size} and {MAX_MEMSZ}"
            )
        (nregions,) = _U32.unpack_from(data, OFF_NREGIONS)
        if nregions > MAX_REGIONS:
            raise PurgatoryUnavailable(f"purgatory blob has {nregions} regions (max {MAX_REGIONS})")
        self._buffer = bytearray(data)
        # exported: the buffer can never be resized (and so never reallocated)
        self._view = memoryview(self._buffer)
        self._memsz = (memsz + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)

    @property
    def buffer(self) -> bytearray:
        """The segment's bytes (``bufsz`` long); always the same object."""
        return self._buffer

    @property
    def bufsz(self) -> int:
        return len(self._buffer)

    @property
    def memsz(self) -> int:
        """Bytes the segment occupies in memory (bss and stack), page-rounded."""
        return self._memsz

    @property
    def nregions(self) -> int:
        return int(_U32.unpack_from(self._buffer, OFF_NREGIONS)[0])

    @property
    def policy(self) -> Policy:
        return Policy(_U32.unpack_from(self._buffer, OFF_POLICY)[0] & 3)

    @property
    def boot_params(self) -> int:
        return int(_U64.unpack_from(self._buffer, OFF_BOOT_PARAMS)[0])

    @property
    def kernel_entry(self) -> int:
        return int(_U64.unpack_from(self._buffer, OFF_KERNEL_ENTRY)[0])

    @property
    def serial_port(self) -> int:
        return int(_U64.unpack_from(self._buffer, OFF_SERIAL_PORT)[0])

    def configure(
        self,
        *,
        boot_params: int,
        kernel_entry: int,
        serial_port: int = 0x3F8,
        policy: Policy = DEFAULT_POLICY,
    ) -> None:
        """Set where the kernel starts and what to do on a mismatch (checked first,
        then written; the buffer is untouched on an error)."""
        _u64("boot_params", boot_params)
        _u64("kernel entry", kernel_entry)
        if boot_params == 0:
            raise PurgatoryError("purgatory boot_params address is 0")
        if kernel_entry == 0:
            raise PurgatoryError("purgatory kernel entry is 0")
        if not isinstance(serial_port, int) or not 0 <= serial_port <= 0xFFF8:
            raise PurgatoryError(f"purgatory serial port {serial_port!r} is not an I/O port")
        if not isinstance(policy, int) or int(policy) & ~_POLICY_BITS:
            raise PurgatoryError(f"purgatory policy {policy!r} has unknown bits")
        _U64.pack_into(self._buffer, OFF_BOOT_PARAMS, boot_params)
        _U64.pack_into(self._buffer, OFF_KERNEL_ENTRY, kernel_entry)
        _U64.pack_into(self._buffer, OFF_SERIAL_PORT, serial_port)
        _U32.pack_into(self._buffer, OFF_POLICY, int(policy))

    def set_region(
        self,
        index: int,
        start: int,
        data: bytes | bytearray | memoryview,
        flags: RegionFlag = NO_FLAGS,
        *,
        digest: bytes | None = None,
    ) -> None:
        """Describe region ``index`` as the bytes ``data`` at physical ``start``.

        ``index`` replaces an existing region or appends the next one (regions are
        contiguous from 0).  Digested regions store SHA-256 of ``data``, or ``digest``
        when the caller computed it without reading ``data`` (a mapped file is read
        through its descriptor: a truncated mapping would raise SIGBUS); ``SKIP`` and
        ``ELF_STRUCTURAL`` regions store a zero digest (the purgatory does not use it).
        """
        if digest is not None and len(digest) != 32:
            raise PurgatoryError(f"purgatory region {index}: a SHA-256 digest has 32 bytes")
        count = self.nregions
        if not isinstance(index, int) or not 0 <= index <= min(count, MAX_REGIONS - 1):
            raise PurgatoryError(
                f"purgatory region {index!r}: the header holds regions 0..{count} "
                f"(at most {MAX_REGIONS})"
            )
        _u64(f"region {index} start", start)
        if not isinstance(flags, int) or int(flags) & ~_FLAG_BITS:
            raise PurgatoryError(f"purgatory region {index}: unknown flags {flags!r}")
        flags = RegionFlag(flags)
        self._write_region(index, start, data, flags, digest)
        if index == count:
            _U32.pack_into(self._buffer, OFF_NREGIONS, count + 1)

    def update_digest(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """Rehash region ``index`` from its new bytes (start and flags kept)."""
        current = self.region(index)
        self._write_region(index, current.start, data, current.flags)

    def region(self, index: int) -> Region:
        """Region ``index`` as the header holds it."""
        count = self.nregions
        if not isinstance(index, int) or not 0 <= index < count:
            raise PurgatoryError(f"purgatory region {index!r}: the header holds {count} regions")
        start, length, digest, flags, _ = _REGION.unpack_from(
            self._buffer, OFF_REGIONS + index * REGION_SIZE
        )
        return Region(start, length, digest, RegionFlag(flags & 3))

    def regions(self) -> list[Region]:
        return [self.region(i) for i in range(self.nregions)]

    def _write_region(
        self,
        index: int,
        start: int,
        data: bytes | bytearray | memoryview,
        flags: RegionFlag,
        known: bytes | None = None,
    ) -> None:
        view = memoryview(data).cast("B")
        length = view.nbytes
        if start + length - 1 > _U64_MAX:
            raise PurgatoryError(
                f"purgatory region {index}: [{start:#x}, +{length:#x}) wraps past 2^64"
            )
        if flags & (RegionFlag.SKIP | RegionFlag.ELF_STRUCTURAL):
            digest = bytes(32)
        elif known is not None:
            digest = known
        else:
            digest = hashlib.sha256(view).digest()
        _REGION.pack_into(
            self._buffer, OFF_REGIONS + index * REGION_SIZE, start, length, digest, int(flags), 0
        )
