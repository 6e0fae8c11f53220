"""The architecture interface: what differs between x86_64, ppc64le, ... .

An :class:`Arch` knows its ELF machine, how big the preallocated elfcorehdr must be,
how to fill it from a :class:`~kdumpd.core.topology.Topology`, and which image
segments a hotplug event regenerates (and must therefore be left out of the
purgatory digest).  x86_64 regenerates only the elfcorehdr; ppc64le also
regenerates its FDT (CPU nodes), which is why :attr:`Arch.regenerated_segments`
returns segment *kinds* rather than a yes/no.

Capacity policy (docs/kernel-interfaces.md §3, §5):

* the kernel advertises the elfcorehdr segment size it will rewrite in place in
  ``/sys/kernel/crash_elfcorehdr_size`` (CONFIG_CRASH_HOTPLUG); kexec-tools
  ``--hotplug`` uses ``ALIGN(size, 1024)`` as the segment's ``memsz``.  The x86
  value is ``(2 + NR_CPUS_DEFAULT + CRASH_MAX_MEMORY_RANGES) * sizeof(Elf64_Phdr)``
  with no ``Elf64_Ehdr`` term, although the kernel writes the 64-byte Ehdr too, and
  NR_CPUS_DEFAULT may be below the possible CPUs, for each of which the kernel's
  rebuild writes a PT_NOTE.  So we use ``PAGE_ALIGN(max(size + 64, 64 + (possible +
  2 + 8192) * 56))``: whatever the kernel writes there in place fits, and the buffer
  is the whole segment (the purgatory's structural check of an in-place header reads
  up to its length).  Never less than the current topology needs;
* otherwise: possible CPUs + 8192 ranges (the kernel's default
  CONFIG_CRASH_MAX_MEMORY_RANGES), at least what the current topology needs, and at
  least 16 KiB (kexec-tools' ``max(bufsz, 16 KiB)`` without ``--hotplug``);
* ``max_cpus``/``max_ranges`` override that computation (the operator knows best; a
  too-small override gives a :class:`~kdumpd.core.errors.CapacityError` on build).
"""

from __future__ import annotations

from typing import ClassVar

from kdumpd.core.arch import Arch, FdtArch
from kdumpd.core.elfcorehdr import (
    EHDR_SIZE,
    PHDR_SIZE,
    elfcorehdr_capacity,
)
from kdumpd.core.ranges import crash_memory_ranges, round_up
from kdumpd.core.segment import PAGE_SIZE, ImageBuilder, SegmentKind
from kdumpd.core.topology import CrashNote, MemRange, Topology

__all__ = [
    "Arch",
    "ArchIdentity",
    "FdtArch",
    "default_digested_segments",
    "default_elfcorehdr_capacity",
    "present_crash_notes",
]

#: Default number of memory ranges to size for (kernel CONFIG_CRASH_MAX_MEMORY_RANGES).
DEFAULT_MAX_RANGES = 8192
#: kexec-tools' minimum elfcorehdr segment without --hotplug (crashdump-x86.c).
MIN_ELFCOREHDR_SIZE = 16 * 1024


class ArchIdentity:
    """What every architecture states the same way: subclasses set ``NAME``,
    ``ELF_MACHINE``, ``REGENERATED`` (the segment kinds hotplug rewrites) and
    ``OFFLINED_RAM_STAYS_IN_PLACE``."""

    __slots__ = ()
    NAME: ClassVar[str]
    ELF_MACHINE: ClassVar[int]
    REGENERATED: ClassVar[frozenset[SegmentKind]]
    OFFLINED_RAM_STAYS_IN_PLACE: ClassVar[bool]

    @property
    def name(self) -> str:
        return self.NAME

    @property
    def elf_machine(self) -> int:
        return self.ELF_MACHINE

    @property
    def regenerated_segments(self) -> frozenset[SegmentKind]:
        return self.REGENERATED

    def digested_segments(self, *, hotplug: bool) -> frozenset[SegmentKind]:
        return default_digested_segments(self.REGENERATED, hotplug=hotplug)

    @property
    def offlined_ram_stays_in_place(self) -> bool:
        return self.OFFLINED_RAM_STAYS_IN_PLACE

    def dump_ranges(self, topology: Topology) -> tuple[MemRange, ...]:
        return crash_memory_ranges(topology)

    def image_builder(self) -> ImageBuilder | None:
        return None


def present_crash_notes(topology: Topology) -> list[CrashNote]:
    """``crash_notes`` of the present CPUs, ascending (the reader lists them by CPU)."""
    present = set(topology.present_cpus)
    return [n for n in topology.crash_notes if n.cpu in present]


def default_digested_segments(
    regenerated: frozenset[SegmentKind], *, hotplug: bool
) -> frozenset[SegmentKind]:
    """Every kind but purgatory, minus ``regenerated`` when the kernel may rewrite them."""
    kinds = frozenset(SegmentKind) - {SegmentKind.PURGATORY}
    return kinds - regenerated if hotplug else kinds


def default_elfcorehdr_capacity(
    topology: Topology,
    *,
    needed_cpus: int,
    needed_ranges: int,
    max_cpus: int | None,
    max_ranges: int | None,
) -> int:
    """The capacity policy described in the module docstring.

    ``needed_cpus``/``needed_ranges`` are what the current topology puts in the header.
    """
    if max_cpus is not None or max_ranges is not None:
        cpus = max_cpus if max_cpus is not None else len(topology.possible_cpus)
        ranges = max_ranges if max_ranges is not None else DEFAULT_MAX_RANGES
        return max(elfcorehdr_capacity(cpus, ranges), MIN_ELFCOREHDR_SIZE)
    needed = elfcorehdr_capacity(needed_cpus, needed_ranges)
    kernel_size = topology.capabilities.crash_elfcorehdr_size
    if kernel_size:
        possible = len(topology.possible_cpus)
        rebuilt = EHDR_SIZE + (possible + 2 + DEFAULT_MAX_RANGES) * PHDR_SIZE
        return round_up(max(kernel_size + EHDR_SIZE, rebuilt, needed), PAGE_SIZE)
    cpus = max(len(topology.possible_cpus), needed_cpus)
    ranges = max(DEFAULT_MAX_RANGES, needed_ranges)
    return max(elfcorehdr_capacity(cpus, ranges), MIN_ELFCOREHDR_SIZE)
