"""x86_64: the elfcorehdr as kexec-tools' ``kexec -p`` builds it (kexec-internals.md §1).

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
  (:func:`kdumpd.core.ranges.crash_memory_ranges`), ``p_vaddr = PAGE_OFFSET + start``
  with kexec-tools' default ``0xffff888000000000`` when the topology has no
  ``page_offset``.

Not done here yet: the backup-region remap (kexec-tools copies the first RAM range
below 640 KiB to a backup segment and points that PT_LOAD's ``p_offset`` at the
copy, §1.8).  It needs a backup segment in the image, so it belongs to the loader
issue; until then that PT_LOAD's ``p_offset`` is the range start, as the kernel's own
in-place rebuild writes it (§4.6).
"""

from __future__ import annotations

from kdumpd.arch.base import ArchIdentity, default_elfcorehdr_capacity
from kdumpd.core.elfcorehdr import (
    Elfcorehdr,
    ElfLoads,
    ElfNotes,
    HeaderLayout,
    KernelTextLoad,
)
from kdumpd.core.image import SegmentKind
from kdumpd.core.ranges import crash_memory_ranges
from kdumpd.core.topology import CrashNote, Topology

EM_X86_64 = 62
#: kexec-tools ``X86_64_PAGE_OFFSET`` (no KASLR of the direct map).
X86_64_PAGE_OFFSET = 0xFFFF888000000000
#: ``__START_KERNEL_map``: where the kernel image mapping starts.
START_KERNEL_MAP = 0xFFFFFFFF80000000
#: The part of that mapping kexec-tools searches for the kernel text (512 MiB).
KERNEL_TEXT_AREA = 512 << 20

_REGENERATED = frozenset({SegmentKind.ELFCOREHDR})


def present_crash_notes(topology: Topology) -> list[CrashNote]:
    """``crash_notes`` of the present CPUs (ascending when the reader kept its contract)."""
    present = set(topology.present_cpus)
    return [n for n in topology.crash_notes if n.cpu in present]  # writer orders by CPU


class X86_64(ArchIdentity):
    """The x86_64 back-end (stateless)."""

    __slots__ = ()
    NAME = "x86_64"
    ELF_MACHINE = EM_X86_64
    REGENERATED = _REGENERATED

    def elfcorehdr_capacity(
        self, topology: Topology, *, max_cpus: int | None = None, max_ranges: int | None = None
    ) -> int:
        return default_elfcorehdr_capacity(
            topology,
            needed_cpus=len(present_crash_notes(topology)),
            needed_ranges=len(crash_memory_ranges(topology)),
            max_cpus=max_cpus,
            max_ranges=max_ranges,
        )

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
            ElfLoads(ram=crash_memory_ranges(topology), page_offset=page_offset, kernel_text=text),
        )
