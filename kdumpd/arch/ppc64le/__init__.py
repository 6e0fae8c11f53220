"""ppc64le: the elfcorehdr and the crash FDT, as kexec-tools / the kernel build them.

elfcorehdr (kexec-tools kexec/arch/ppc64/crashdump-ppc64.c; docs/kernel-interfaces.md
§6):

* ELF64, ``e_machine`` = ``EM_PPC64`` (21), ``ELFDATA2LSB`` (kexec-tools picks the
  byte order of the host; ppc64le is little-endian).
* One PT_NOTE per *present* CPU with ``crash_notes`` (ascending), then vmcoreinfo —
  the same as x86_64.
* **No** kernel-text PT_LOAD: ppc64's ``crash_elf_info`` has no kernel-text
  placement (the kernel's own ppc64 header is built without the kernel map too).
* One PT_LOAD per System RAM range minus the crash reservation, ``p_vaddr =
  PAGE_OFFSET + start`` with the fixed ppc64 ``PAGE_OFFSET`` 0xc000000000000000.
  The first 64 KiB (kexec-tools' backup region ``BACKUP_SRC_START..END``,
  0x0-0xffff) is its own PT_LOAD and the RAM range that starts at 0 continues at
  0x10000, as kexec-tools splits it.  The backup *copy* (``p_offset`` of that
  PT_LOAD pointing at the backup segment) belongs to the loader, like on x86_64.
* The RAM ranges come from ``/proc/iomem``'s System RAM (as on x86_64).  kexec-tools
  reads the device tree instead (``memory@`` nodes and the LMBs of
  ``ibm,dynamic-memory[-v2]`` assigned to the partition) and the kernel's own rebuild
  walks memblock; on a running system these describe the same RAM, but this was not
  checked on real ppc64le hardware.
* Not modelled: the PT_LOADs kexec-tools adds for RTAS/OPAL regions that overlap
  the crash reservation (the topology has no ``/rtas`` facts yet), and ``mem=``.

Capacity: ``/sys/kernel/crash_elfcorehdr_size`` when present (aligned to 1 KiB,
as kexec-tools ``--hotplug``), else the kernel's ppc64 formula ``sizeof(Elf64_Ehdr)
+ (possible CPUs + 1 + CRASH_MAX_MEMORY_RANGES) * sizeof(Elf64_Phdr)``,
never less than the current topology needs.

crash FDT (:mod:`kdumpd.core.fdt`): the capture kernel learns its CPUs from the FDT
segment, so CPU hotplug regenerates its ``/cpus`` node from the live device tree
(``Topology.dt_cpus``), as the kernel's ``update_crash_fdt()`` does.  Both segments
are left out of the purgatory digest with crash-hotplug support (kexec-tools
``arch_do_exclude_segment()`` on ppc64: the elfcorehdr and every segment starting
with the FDT magic, docs/kernel-interfaces.md §6).
"""

from __future__ import annotations

from collections.abc import Sequence

from kdumpd.arch.base import DEFAULT_MAX_RANGES, ArchIdentity, present_crash_notes
from kdumpd.core.elfcorehdr import (
    EHDR_SIZE,
    ELF_CORE_HEADER_ALIGN,
    PHDR_SIZE,
    Elfcorehdr,
    ElfLoads,
    ElfNotes,
    HeaderLayout,
)
from kdumpd.core.fdt import CrashFdt, FdtLayout, minimal_fdt, required_capacity
from kdumpd.core.ranges import crash_memory_ranges, round_up
from kdumpd.core.segment import SegmentKind
from kdumpd.core.topology import DtNode, MemRange, Topology

EM_PPC64 = 21
#: The capture kernel's arguments by default: the core of kdump-utils' ppc64le
#: KDUMP_COMMANDLINE_APPEND (``maxcpus=1`` and no IRQ distribution rather than
#: ``nr_cpus=1``; no ACPI).
CAPTURE_APPEND = "irqpoll maxcpus=1 noirqdistrib reset_devices"
#: ppc64 book3s ``PAGE_OFFSET`` (kexec-tools crashdump-ppc64.h, kernel page.h).
PPC64_PAGE_OFFSET = 0xC000000000000000
#: kexec-tools' ppc64 backup region: the first 64 KiB get their own PT_LOAD.
BACKUP_SRC_END = 0xFFFF

_REGENERATED = frozenset({SegmentKind.ELFCOREHDR, SegmentKind.FDT})


def ppc64_memory_ranges(topology: Topology) -> list[MemRange]:
    """Crash memory ranges with the first 64 KiB split off (kexec-tools' backup region)."""
    ranges = list(crash_memory_ranges(topology))
    if ranges and ranges[0].start == 0 and ranges[0].end > BACKUP_SRC_END:
        first = ranges[0]
        ranges[0:1] = [MemRange(0, BACKUP_SRC_END), MemRange(BACKUP_SRC_END + 1, first.end)]
    return ranges


def ppc64_elfcorehdr_size(cpus: int, ranges: int) -> int:
    """``Ehdr + (cpus + 1 vmcoreinfo + ranges) * Phdr``, aligned to 1 KiB."""
    return round_up(EHDR_SIZE + (cpus + 1 + ranges) * PHDR_SIZE, ELF_CORE_HEADER_ALIGN)


class Ppc64le(ArchIdentity):
    """ppc64le (stateless)."""

    __slots__ = ()
    NAME = "ppc64le"
    ELF_MACHINE = EM_PPC64
    REGENERATED = _REGENERATED
    # update_crash_elfcorehdr() cuts the range being offlined out itself
    OFFLINED_RAM_STAYS_IN_PLACE = False

    # ----------------------------------------------------------------- elfcorehdr

    def elfcorehdr_capacity(
        self, topology: Topology, *, max_cpus: int | None = None, max_ranges: int | None = None
    ) -> int:
        needed = ppc64_elfcorehdr_size(
            len(present_crash_notes(topology)), len(ppc64_memory_ranges(topology))
        )
        if max_cpus is not None or max_ranges is not None:
            if (max_cpus is not None and max_cpus < 0) or (
                max_ranges is not None and max_ranges < 0
            ):
                raise ValueError(f"negative elfcorehdr sizing: cpus={max_cpus} ranges={max_ranges}")
            cpus = max_cpus if max_cpus is not None else len(topology.possible_cpus)
            ranges = max_ranges if max_ranges is not None else DEFAULT_MAX_RANGES
            return ppc64_elfcorehdr_size(cpus, ranges)
        kernel_size = topology.capabilities.crash_elfcorehdr_size
        if kernel_size:
            return max(round_up(kernel_size, ELF_CORE_HEADER_ALIGN), needed)
        formula = ppc64_elfcorehdr_size(len(topology.possible_cpus), DEFAULT_MAX_RANGES)
        return max(formula, needed)

    def build_elfcorehdr(self, topology: Topology, hdr: Elfcorehdr) -> HeaderLayout:
        return hdr.write(
            ElfNotes(cpus=present_crash_notes(topology), vmcoreinfo=topology.vmcoreinfo),
            ElfLoads(ram=ppc64_memory_ranges(topology), page_offset=PPC64_PAGE_OFFSET),
        )

    # ------------------------------------------------------------------- crash FDT

    def fdt_nodes(self, topology: Topology) -> Sequence[DtNode] | None:
        """The ``/cpus`` children to describe; ``None`` keeps the base blob's (a
        topology read without a device tree)."""
        return topology.dt_cpus or None

    def new_fdt(
        self, topology: Topology, base: bytes | bytearray | None = None, capacity: int | None = None
    ) -> CrashFdt:
        """A crash FDT buffer for ``topology`` (not written yet).

        ``base`` is the blob the image is loaded with (default: a skeleton tree);
        ``capacity`` defaults to room for every possible core
        (:func:`kdumpd.core.fdt.required_capacity`), at least ``base``'s totalsize.
        """
        if base is None:
            regs = [r for n in topology.dt_cpus if n.is_cpu and (r := n.reg) is not None]
            base = minimal_fdt(boot_cpuid_phys=min(regs, default=0))
        if capacity is None:
            probe = CrashFdt(base)
            capacity = required_capacity(
                probe, self.fdt_nodes(topology), possible_threads=len(topology.possible_cpus)
            )
        return CrashFdt(base, capacity)

    def build_fdt(self, topology: Topology, fdt: CrashFdt) -> FdtLayout:
        """Rewrite ``fdt``'s ``/cpus`` node in place for ``topology``."""
        return fdt.write(self.fdt_nodes(topology))
