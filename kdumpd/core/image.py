"""The crash image: a list of segments inside the crashkernel reservation.

A kexec crash image is at most 16 physically placed segments (kernel, initrd,
purgatory, boot parameters, the elfcorehdr, ...; docs/kernel-interfaces.md §8).
This module models what hotplug regenerates: the **elfcorehdr** segment, whose
buffer is allocated once at its fixed capacity and rewritten in place by
:meth:`CrashImage.regenerate`.  :class:`~kdumpd.core.segment.Segment` and the
placement helpers live in :mod:`kdumpd.core.segment`; an architecture's image builder
(:class:`~kdumpd.core.segment.ImageBuilder`) adds the other segments around it.

Placement (docs/kernel-interfaces.md §5, §8): kexec-tools clamps every crash
segment to the *highest* ``Crash kernel`` range and allocates top-down.  It aligns
the elfcorehdr to 1 KiB, but segment addresses must be page aligned, so we place it
top-down at a 4 KiB boundary with ``memsz`` rounded up to whole pages.  The address never changes
afterwards: the capture kernel's ``elfcorehdr=`` argument points at it.

ppc64le adds the **crash FDT** segment (:mod:`kdumpd.core.fdt`): its own fixed
buffer, placed top-down right below the elfcorehdr, whose ``/cpus`` node
:meth:`CrashImage.regenerate` rewrites in place together with the elfcorehdr (the
FDT's size is checked first, so a too-small FDT leaves both segments as they were).
Architectures without ``SegmentKind.FDT`` in ``regenerated_segments`` (x86_64) get
no FDT segment and never import libfdt.

On a machine without a crashkernel reservation (no ``Crash kernel`` line in
``/proc/iomem``) the image can still be built and written to a file (``kdumpd
elfcorehdr``) but not loaded: ``mem`` is 0 and :attr:`CrashImage.placed` is False.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdumpd.core.elfcorehdr import Elfcorehdr, HeaderLayout
from kdumpd.core.errors import CapacityError, TooLargeError, UnsupportedError
from kdumpd.core.ranges import round_up
from kdumpd.core.segment import (
    PAGE_SIZE,
    Segment,
    SegmentKind,
    place_below,
    place_top_down,
)
from kdumpd.core.topology import Topology

__all__ = ["PAGE_SIZE", "CrashImage", "Segment", "SegmentKind", "place_below", "place_top_down"]

if TYPE_CHECKING:
    from kdumpd.core.arch import Arch, FdtArch
    from kdumpd.core.fdt import CrashFdt, FdtLayout


#: No crash segment kdumpd builds is larger: an elfcorehdr for 65,536 CPUs and
#: 1,048,576 ranges (the largest ``[elfcorehdr]`` sizing) is 61 MiB, and kernels
#: advertise far less in ``crash_elfcorehdr_size`` (8,192 CPUs + 32,768 ranges: 2.2 MiB).
MAX_SEGMENT_BYTES = 64 << 20


def check_segment_size(what: str, size: int, topology: Topology) -> None:
    """Refuse a segment buffer the machine cannot use, before allocating it: it must
    fit the largest crash reservation (:func:`place_top_down` also checks the one it
    uses), or without a reservation (a dry run) the RAM, and never exceed
    :data:`MAX_SEGMENT_BYTES`.  A corrupt or hostile size is then one error line, not
    a huge allocation, a MemoryError or a minute of page faults."""
    crash = topology.crashkernel
    if crash:
        limit, bound = max(r.size for r in crash), "the largest crash kernel reservation"
    else:
        ram = sum(r.size for r in topology.system_ram)
        limit, bound = ram, "the System RAM"
    if limit > MAX_SEGMENT_BYTES:
        limit, bound = MAX_SEGMENT_BYTES, "any crash segment kdumpd builds"
    if size > limit:
        raise TooLargeError(what, size, limit, bound)


class CrashImage:
    """The segments of one crash image: the regenerated elfcorehdr (and, on ppc64le,
    the regenerated crash FDT)."""

    __slots__ = (
        "_elfcorehdr",
        "_fdt",
        "_fdt_layout",
        "_fdt_segment",
        "_hdr",
        "_layout",
        "arch",
        "placed",
    )

    def __init__(
        self,
        arch: Arch,
        hdr: Elfcorehdr,
        mem: int | None,
        fdt: CrashFdt | None = None,
        fdt_mem: int | None = None,
    ) -> None:
        self.arch = arch
        self._hdr = hdr
        self.placed = mem is not None
        self._elfcorehdr = Segment(
            kind=SegmentKind.ELFCOREHDR,
            mem=mem if mem is not None else 0,
            memsz=round_up(hdr.capacity, PAGE_SIZE),
            buf=hdr.buffer,
        )
        self._layout: HeaderLayout | None = hdr.layout
        self._fdt = fdt
        self._fdt_segment: Segment | None = None
        self._fdt_layout: FdtLayout | None = None
        if fdt is not None:
            self._fdt_segment = Segment(
                kind=SegmentKind.FDT,
                mem=fdt_mem if fdt_mem is not None else 0,
                memsz=round_up(fdt.capacity, PAGE_SIZE),
                buf=fdt.buffer,
            )
            self._fdt_layout = fdt.layout

    @classmethod
    def for_topology(
        cls,
        arch: Arch,
        topology: Topology,
        capacity: int,
        *,
        fdt_base: bytes | bytearray | None = None,
        fdt_capacity: int | None = None,
    ) -> CrashImage:
        """Allocate the elfcorehdr at ``capacity``, place it and build it for ``topology``.

        For an architecture that regenerates an FDT (ppc64le) the crash FDT is
        allocated too, from ``fdt_base`` (the blob the image is loaded with; default a
        skeleton tree) at ``fdt_capacity`` (default: room for every possible core).
        Raises :class:`CapacityError` when a header or a segment does not fit.
        """
        # Placed and bounded before the buffer is allocated: a corrupt
        # crash_elfcorehdr_size of 1.5 GB is one error line, not a 1.5 GB bytearray.
        mem = place_top_down(topology.crashkernel, round_up(capacity, PAGE_SIZE))
        check_segment_size("elfcorehdr", capacity, topology)
        hdr = Elfcorehdr(capacity, arch.elf_machine)
        fdt: CrashFdt | None = None
        fdt_mem: int | None = None
        if SegmentKind.FDT in arch.regenerated_segments:
            if fdt_capacity is not None:
                check_segment_size("crash FDT", fdt_capacity, topology)
            fdt = _fdt_arch(arch).new_fdt(topology, fdt_base, fdt_capacity)
            if mem is not None:
                fdt_mem = place_below(topology.crashkernel, mem, round_up(fdt.capacity, PAGE_SIZE))
        image = cls(arch, hdr, mem, fdt, fdt_mem)
        image.regenerate(topology)
        return image

    @property
    def elfcorehdr(self) -> Segment:
        return self._elfcorehdr

    @property
    def header(self) -> Elfcorehdr:
        return self._hdr

    @property
    def fdt(self) -> Segment | None:
        """The crash FDT segment (ppc64le), ``None`` on architectures without one."""
        return self._fdt_segment

    @property
    def crash_fdt(self) -> CrashFdt | None:
        return self._fdt

    @property
    def fdt_layout(self) -> FdtLayout | None:
        return self._fdt_layout

    @property
    def segments(self) -> tuple[Segment, ...]:
        if self._fdt_segment is not None:
            return (self._elfcorehdr, self._fdt_segment)
        return (self._elfcorehdr,)

    @property
    def layout(self) -> HeaderLayout | None:
        return self._layout

    def regenerate(self, topology: Topology) -> HeaderLayout:
        """Rewrite the elfcorehdr for ``topology`` in place (same buffer, size, address).

        Raises :class:`UnsupportedError` if the crash reservation no longer holds the
        segment (the image must be reloaded), :class:`CapacityError` if the header
        outgrew its capacity; in both cases the previous header stays intact.
        """
        if self.placed:
            for segment in self.segments:
                seg = segment.range
                if not any(r.start <= seg.start and seg.end <= r.end for r in topology.crashkernel):
                    raise UnsupportedError(
                        f"{segment.kind} segment {seg.start:#x}-{seg.end:#x} is no longer "
                        "inside a Crash kernel reservation; the crash image must be reloaded"
                    )
        fdt = self._fdt
        if fdt is not None:  # check the FDT fits before the elfcorehdr changes
            needed = fdt.size_for(_fdt_arch(self.arch).fdt_nodes(topology))
            if needed > fdt.capacity:
                raise CapacityError("crash FDT /cpus", needed, fdt.capacity)
        layout = self.arch.build_elfcorehdr(topology, self._hdr)
        self._layout = layout
        if fdt is not None:
            self._fdt_layout = _fdt_arch(self.arch).build_fdt(topology, fdt)
        return layout


def _fdt_arch(arch: Arch) -> FdtArch:
    from kdumpd.core.arch import FdtArch

    if not isinstance(arch, FdtArch):
        raise UnsupportedError(f"{arch.name} regenerates an FDT but has no FDT builder")
    return arch
