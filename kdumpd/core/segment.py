"""Crash-image segments, where they go, and the checks a segment list must pass.

A kexec crash image is at most 16 physically placed segments: ``buf`` (``bufsz``
bytes) is copied to physical ``mem`` and the rest of ``memsz`` is zero-filled.  For a
crash image (``KEXEC_ON_CRASH``) every segment and the entry point must lie inside
the main ``Crash kernel`` reservation (``crashk_res``; not the ``,low`` one).

The kernel checks alignment, overlap, bounds and sizes only *after* it has freed the
previous crash image (kernel/kexec.c, kernel/kexec_core.c), so a list it would refuse
leaves the machine with no crash kernel at all.  :func:`validate_segments` checks all
of it before any syscall; see docs/kernel-interfaces.md.

This module is the core's vocabulary for segments; :mod:`kdumpd.core.image` (the
regenerated elfcorehdr / crash FDT) and the architecture image builders
(:class:`ImageBuilder`) both use it.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from kdumpd.core.errors import CapacityError, InputError
from kdumpd.core.ranges import round_up
from kdumpd.core.topology import MemRange, Topology

PAGE_SIZE = 4096
#: include/uapi/linux/kexec.h KEXEC_SEGMENT_MAX
MAX_SEGMENTS = 16
ELF_MAGIC = b"\x7fELF"

Buffer = bytes | bytearray | memoryview


class SegmentKind(enum.StrEnum):
    ELFCOREHDR = "elfcorehdr"
    KERNEL = "kernel"
    INITRD = "initrd"
    PURGATORY = "purgatory"
    SETUP = "setup"
    BACKUP = "backup"
    FDT = "fdt"
    SETUP_DATA = "setup_data"


def page_align(value: int) -> int:
    return round_up(value, PAGE_SIZE)


@dataclass(frozen=True, slots=True, eq=False)
class Segment:
    """One kexec segment: ``buf`` is copied to physical ``mem``, ``memsz`` bytes
    (page multiple) are reserved there.  ``buf`` may be the live, in-place
    rewritten buffer of a regenerated segment (the elfcorehdr's ``bytearray``) or a
    read-only view of a mapped file (kernel, initrd)."""

    kind: SegmentKind
    mem: int
    memsz: int
    buf: Buffer

    @property
    def bufsz(self) -> int:
        return len(self.buf)

    @property
    def range(self) -> MemRange:
        return MemRange(self.mem, self.mem + self.memsz - 1)


def crash_window(reservations: tuple[MemRange, ...]) -> MemRange | None:
    """The reservation crash segments go into: the highest ``Crash kernel`` range
    (``crashk_res``; a second, lower one is the ``crashkernel=,low`` range)."""
    if not reservations:
        return None
    return max(reservations, key=lambda r: r.end)


def place_top_down(reservations: tuple[MemRange, ...], memsz: int) -> int | None:
    """Highest page-aligned address for ``memsz`` bytes in the *highest* reservation.

    ``None`` when there is no reservation; :class:`CapacityError` when it is too small.
    """
    window = crash_window(reservations)
    if window is None:
        return None
    return place_below(reservations, window.end + 1, memsz, what="elfcorehdr")


def place_below(
    reservations: tuple[MemRange, ...], top: int, memsz: int, *, what: str = "crash FDT"
) -> int:
    """Highest page-aligned address for ``memsz`` bytes ending at or below ``top``,
    inside the highest reservation (the one :func:`place_top_down` used)."""
    window = crash_window(reservations)
    if window is None:
        raise CapacityError(f"{what} placement (no Crash kernel reservation)", memsz, 0)
    mem = (top - memsz) // PAGE_SIZE * PAGE_SIZE
    if mem < window.start:
        raise CapacityError(
            f"{what} placement in Crash kernel {window.start:#x}-{window.end:#x}",
            memsz,
            max(0, top - window.start),
        )
    return mem


def validate_segments(
    segments: Sequence[Segment],
    entry: int,
    window: MemRange,
    *,
    headroom: int = 0,
    source: str = "crash image",
    heads: Mapping[SegmentKind, bytes] | None = None,
) -> None:
    """Everything the kernel would check after freeing the old crash image, and more.

    Raises :class:`InputError` naming the first violation:

    * at most :data:`MAX_SEGMENTS` segments, at least one;
    * ``mem`` and ``memsz`` page-aligned, ``memsz > 0``, ``bufsz <= memsz``;
    * every segment inside ``window`` (``crashk_res``), none overlapping another;
    * ``entry`` inside ``window`` and inside one of the segments;
    * ``headroom`` bytes free at the bottom of ``window`` (where the kernel takes
      its control pages and identity page tables, first fit from the start);
    * only the elfcorehdr segment starts with ``\\x7fELF`` (the 6.6+ hotplug code
      finds the header by that magic) and it does start with it.

    ``heads`` gives the first bytes of segments whose buffers map files (read through
    the file, see :class:`FileReader`); their buffers are then not read at all.
    """

    def bad(problem: str) -> InputError:
        return InputError(source, problem)

    if not segments:
        raise bad("no segments")
    if len(segments) > MAX_SEGMENTS:
        raise bad(f"{len(segments)} segments, the kernel accepts at most {MAX_SEGMENTS}")
    for s in segments:
        name = f"{s.kind} segment at {s.mem:#x}"
        if s.mem % PAGE_SIZE or s.memsz % PAGE_SIZE or s.memsz <= 0:
            raise bad(f"{name}: mem {s.mem:#x} / memsz {s.memsz:#x} not page-aligned")
        if s.bufsz > s.memsz:
            raise bad(f"{name}: bufsz {s.bufsz:#x} > memsz {s.memsz:#x}")
        if s.mem < window.start or s.mem + s.memsz - 1 > window.end:
            raise bad(
                f"{name} (+{s.memsz:#x}) is outside Crash kernel {window.start:#x}-{window.end:#x}"
            )
        head = (heads or {}).get(s.kind)
        magic = bytes((s.buf if head is None else head)[:4]) == ELF_MAGIC
        if magic != (s.kind == SegmentKind.ELFCOREHDR):
            raise bad(
                f"{name}: " + ("starts with \\x7fELF" if magic else "does not start with \\x7fELF")
            )
    ordered = sorted(segments, key=lambda s: s.mem)
    for a, b in itertools.pairwise(ordered):
        if a.mem + a.memsz > b.mem:
            raise bad(f"{a.kind} segment at {a.mem:#x} overlaps {b.kind} segment at {b.mem:#x}")
    if not window.start <= entry <= window.end:
        raise bad(f"entry {entry:#x} is outside Crash kernel {window.start:#x}-{window.end:#x}")
    if not any(s.mem <= entry < s.mem + s.memsz for s in segments):
        raise bad(f"entry {entry:#x} is in no segment")
    free = ordered[0].mem - window.start
    if free < headroom:
        raise bad(
            f"only {free:#x} bytes free below the lowest segment, "
            f"{headroom:#x} needed for the kernel's control pages and page tables"
        )


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """What one ``kexec_load`` gets: the segments, the entry point, the arch flag."""

    segments: tuple[Segment, ...]
    entry: int
    arch_flag: int  # KEXEC_ARCH_* (already shifted), ORed into the flags


class SegmentImage(Protocol):
    """A complete crash image an architecture built around the core's elfcorehdr."""

    @property
    def plan(self) -> LoadPlan:
        """The segment list (its buffers stay alive as long as the image)."""
        ...

    def refresh(self) -> None:
        """After :meth:`CrashImage.regenerate` rewrote the regenerated segments in
        place: update what depends on their bytes (the purgatory's digests)."""
        ...

    def manifest(self) -> list[dict[str, object]]:
        """One JSON-able entry per segment (kind, mem, memsz, bufsz, sha256, ...)."""
        ...

    def set_in_place(self, on: bool) -> None:
        """``on``: the kernel rewrites the regenerated segments itself (loaded with
        ``KEXEC_UPDATE_ELFCOREHDR``), so the purgatory must not digest them (only a
        structural check); off: digest them like every other segment."""
        ...


class FileReader(Protocol):
    """Reads a mapped input file without touching its mapping (past a truncated end a
    mapping raises SIGBUS, which kills the process): the daemon's
    :class:`kdumpd.system.kexec.MappedFile`.  Both raise a one-line
    :class:`InputError` when the file no longer has the bytes that were mapped."""

    def pread(self, size: int, offset: int = 0) -> bytes:
        """Up to ``size`` bytes at ``offset`` (shorter when the file is)."""
        ...

    def sha256(self, offset: int = 0) -> bytes:
        """SHA-256 of the mapped bytes from ``offset`` to the end."""
        ...


@dataclass(frozen=True, slots=True)
class LoaderInputs:
    """What an image builder needs besides the topology and the elfcorehdr.

    ``kernel``/``initrd`` are the file contents (read-only views of mapped files in
    the daemon), ``cmdline`` the capture kernel's arguments (without
    ``elfcorehdr=``), ``purgatory`` the architecture's purgatory blob (empty: the
    one the project built), and
    ``boot_params`` the running kernel's boot parameters where the architecture has
    them (x86: ``/sys/kernel/boot_params/data``; empty when unreadable).

    ``kernel_file``/``initrd_file``, when given, read the same files for the builder:
    headers and digests come from them, and the builder never reads ``kernel`` or
    ``initrd`` itself (they only become segment buffers for the kernel's copy)."""

    kernel: Buffer
    kernel_name: str
    initrd: Buffer | None
    cmdline: str
    purgatory: bytes = b""
    boot_params: bytes = b""
    kernel_file: FileReader | None = None
    initrd_file: FileReader | None = None


class ImageBuilder(Protocol):
    """An architecture's loader: every segment around the core's elfcorehdr."""

    def build(self, inputs: LoaderInputs, topology: Topology, elfcorehdr: Segment) -> SegmentImage:
        """Place and build every segment; raise :class:`KdumpdError` (one line) when
        the inputs or the reservation do not allow it.  Nothing is loaded."""
        ...
