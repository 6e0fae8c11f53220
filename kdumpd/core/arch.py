"""The interface each supported architecture implements for the core.

Like the kernel's ``arch_crash_*`` hooks: which headers an architecture writes, which
segments hotplug regenerates, which purgatory digests.  It lives in the core (the
image model calls it) and :mod:`kdumpd.arch` implements it, so the core never imports
an architecture package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from kdumpd.core.elfcorehdr import Elfcorehdr, HeaderLayout
from kdumpd.core.segment import ImageBuilder, SegmentKind
from kdumpd.core.topology import DtNode, MemRange, Topology

if TYPE_CHECKING:
    from kdumpd.core.fdt import CrashFdt, FdtLayout


@runtime_checkable
class Arch(Protocol):
    """One architecture.  Implementations are stateless."""

    @property
    def name(self) -> str:
        """Kernel/uname name: ``"x86_64"``, ``"ppc64le"``."""
        ...

    @property
    def elf_machine(self) -> int:
        """``e_machine`` of the elfcorehdr (EM_X86_64 = 62, EM_PPC64 = 21)."""
        ...

    @property
    def regenerated_segments(self) -> frozenset[SegmentKind]:
        """Segment kinds rebuilt on CPU/memory hotplug (and excluded from the digest)."""
        ...

    def digested_segments(self, *, hotplug: bool) -> frozenset[SegmentKind]:
        """Segment kinds purgatory verifies.  Purgatory never digests itself; with
        crash-hotplug support the regenerated kinds are left out too
        (docs/kernel-interfaces.md §6)."""
        ...

    def elfcorehdr_capacity(
        self, topology: Topology, *, max_cpus: int | None = None, max_ranges: int | None = None
    ) -> int:
        """Fixed size of the elfcorehdr buffer/segment for this machine, in bytes."""
        ...

    def build_elfcorehdr(self, topology: Topology, hdr: Elfcorehdr) -> HeaderLayout:
        """Rewrite ``hdr`` in place for ``topology``."""
        ...

    def dump_ranges(self, topology: Topology) -> tuple[MemRange, ...]:
        """The memory the elfcorehdr describes with PT_LOADs: System RAM minus the
        crash reservation, minus what the architecture leaves out (x86: the first MiB)."""
        ...

    @property
    def offlined_ram_stays_in_place(self) -> bool:
        """The kernel's in-place elfcorehdr update at ``MEM_OFFLINE`` still lists the
        range being offlined (x86: rebuilt from /proc/iomem, where it still is; powerpc
        cuts it out: docs/kernel-interfaces.md §3), so a hot-remove needs a load."""
        ...

    def image_builder(self) -> ImageBuilder | None:
        """The loader that builds every segment for ``kexec_load`` around the
        elfcorehdr (kernel, initrd, boot parameters, purgatory); ``None`` where
        kdumpd has none yet (then only ``kexec_file_load`` back-ends apply)."""
        ...


@runtime_checkable
class FdtArch(Arch, Protocol):
    """An architecture whose capture kernel learns its CPUs from an FDT segment that
    hotplug regenerates (ppc64le; ``SegmentKind.FDT in regenerated_segments``)."""

    def fdt_nodes(self, topology: Topology) -> Sequence[DtNode] | None:
        """The ``/cpus`` children to describe (``None``: keep the base blob's)."""
        ...

    def new_fdt(
        self, topology: Topology, base: bytes | bytearray | None = None, capacity: int | None = None
    ) -> CrashFdt:
        """A fixed-capacity crash FDT buffer for ``topology`` (not written yet)."""
        ...

    def build_fdt(self, topology: Topology, fdt: CrashFdt) -> FdtLayout:
        """Rewrite ``fdt``'s ``/cpus`` node in place for ``topology``."""
        ...
