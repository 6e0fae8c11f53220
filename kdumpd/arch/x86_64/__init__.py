"""x86_64: the elfcorehdr as kexec-tools' ``kexec -p`` builds it (docs/kernel-interfaces.md §5).

* ``e_machine`` = ``EM_X86_64`` (62), always ELF64.
* One PT_NOTE per *present* CPU that has ``crash_notes`` (ascending CPU number);
  CPUs without the sysfs file are skipped, as kexec-tools skips them on ENOENT.
  (kexec-tools additionally only probes CPU numbers below
  ``sysconf(_SC_NPROCESSORS_CONF)``; we describe every present CPU, which is what a
  hotplug-aware header needs.)
* The vmcoreinfo PT_NOTE when ``/sys/kernel/vmcoreinfo`` was readable.
* The kernel-text PT_LOAD when both ``Kernel code`` (``/proc/iomem``, physical) and
  the kcore-derived virtual text segment are known.
* One PT_LOAD per System RAM range minus the crash reservation
  (:func:`kdumpd.core.ranges.crash_memory_ranges`) and minus the first MiB,
  ``p_vaddr = PAGE_OFFSET + start`` with kexec-tools' default
  ``0xffff888000000000`` when the topology has no ``page_offset``.

The first MiB: since Linux 5.13 (commit f1d4d47c5851) x86 reserves [0, 1 MiB) at
every boot, so a crashed kernel has no data there, and the capture kernel gets that
RAM in its e820 map (it needs it for the real-mode trampoline).  Like the kernel's
own header (arch/x86/kernel/crash.c), kdumpd's has no PT_LOAD there and needs no
backup segment (kexec-tools still copies 640 KiB to one).
"""

from __future__ import annotations

from kdumpd.arch.base import ArchIdentity, default_elfcorehdr_capacity, present_crash_notes
from kdumpd.core.elfcorehdr import (
    Elfcorehdr,
    ElfLoads,
    ElfNotes,
    HeaderLayout,
    KernelTextLoad,
)
from kdumpd.core.ranges import crash_memory_ranges
from kdumpd.core.segment import ImageBuilder, SegmentKind
from kdumpd.core.topology import MemRange, Topology

EM_X86_64 = 62
#: kexec-tools ``X86_64_PAGE_OFFSET`` (no KASLR of the direct map).
X86_64_PAGE_OFFSET = 0xFFFF888000000000
#: ``__START_KERNEL_map``: where the kernel image mapping starts.
START_KERNEL_MAP = 0xFFFFFFFF80000000
#: The part of that mapping kexec-tools searches for the kernel text (512 MiB).
KERNEL_TEXT_AREA = 512 << 20

_REGENERATED = frozenset({SegmentKind.ELFCOREHDR})


#: The capture kernel's arguments by default: the core of kdump-utils' x86_64
#: KDUMP_COMMANDLINE_APPEND (docs/kernel-interfaces.md §7).  ``acpi_no_memhotplug``
#: matters after hotplug: without it the capture kernel re-adds every hot-plugged DIMM
#: from ACPI and runs out of its reservation (docs/e2e.md).
CAPTURE_APPEND = "irqpoll nr_cpus=1 reset_devices acpi_no_memhotplug"

#: x86 reserves the first MiB at boot; the header describes RAM from here up.
LOW_RESERVED_END = 1 << 20


def x86_crash_ranges(topology: Topology) -> tuple[MemRange, ...]:
    """System RAM minus the crash reservation, from 1 MiB up."""
    out = []
    for r in crash_memory_ranges(topology):
        if r.end < LOW_RESERVED_END:
            continue
        out.append(r if r.start >= LOW_RESERVED_END else MemRange(LOW_RESERVED_END, r.end))
    return tuple(out)


class X86_64(ArchIdentity):
    """x86_64 (stateless)."""

    __slots__ = ()
    NAME = "x86_64"
    ELF_MACHINE = EM_X86_64
    REGENERATED = _REGENERATED
    # the in-place update at MEM_OFFLINE walks /proc/iomem, where the range still is
    OFFLINED_RAM_STAYS_IN_PLACE = True

    def elfcorehdr_capacity(
        self, topology: Topology, *, max_cpus: int | None = None, max_ranges: int | None = None
    ) -> int:
        return default_elfcorehdr_capacity(
            topology,
            needed_cpus=len(present_crash_notes(topology)),
            needed_ranges=len(x86_crash_ranges(topology)),
            max_cpus=max_cpus,
            max_ranges=max_ranges,
        )

    def dump_ranges(self, topology: Topology) -> tuple[MemRange, ...]:
        return x86_crash_ranges(topology)

    def image_builder(self) -> ImageBuilder:
        from kdumpd.arch.x86_64.loader import X86ImageBuilder

        return X86ImageBuilder()

    def build_elfcorehdr(self, topology: Topology, hdr: Elfcorehdr) -> HeaderLayout:
        text: KernelTextLoad | None = None
        code = topology.kernel_code
        if code is not None and topology.kernel_text is not None:
            kt = topology.kernel_text
            text = KernelTextLoad(paddr=code.start, vaddr=kt.vaddr, size=kt.size)
        page_offset = topology.page_offset
        if page_offset is None:
            page_offset = X86_64_PAGE_OFFSET
        return hdr.write(
            ElfNotes(cpus=present_crash_notes(topology), vmcoreinfo=topology.vmcoreinfo),
            ElfLoads(ram=x86_crash_ranges(topology), page_offset=page_offset, kernel_text=text),
        )
