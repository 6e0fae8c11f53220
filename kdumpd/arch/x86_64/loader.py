"""The x86_64 crash image for ``kexec_load``: every segment around the elfcorehdr.

Segments, placed top-down inside ``crashk_res`` (the highest ``Crash kernel`` range):

===========  =======================================================================
elfcorehdr   the core's preallocated buffer, at the top (placed by
             :class:`~kdumpd.core.image.CrashImage`; never moves: ``elfcorehdr=``
             names it)
purgatory    the purgatory blob, its header patched (boot_params address, kernel
             entry, one SHA-256 per digested region); the kexec entry point
boot_params  the zero page, the command line at +4096, an e820 extension if needed
initrd       the file as it is
kernel       the bzImage payload (file offset ``(setup_sects + 1) * 512``),
             ``memsz = PAGE_ALIGN(init_size)`` (the decompressor works in place
             there), at a ``kernel_alignment`` multiple, never below
             ``max(pref_address, 1 MiB)``
===========  =======================================================================

Below the lowest segment :func:`headroom` bytes stay free: the kernel takes the
control page, the vmcoreinfo copy and the identity-map page tables for a crash image
from the reservation, first fit from its bottom (arch/x86/kernel/machine_kexec_64.c,
kernel/kexec_core.c), after the segments are placed.

The purgatory verifies four regions (each exactly the bytes kexec copies, ``bufsz``):
0 the elfcorehdr, 1 the kernel payload, 2 boot_params, 3 the initrd.  A hotplug burst
rewrites the elfcorehdr in place and :meth:`X86SegmentImage.refresh` rehashes region 0
only.  With in-kernel crash hotplug (6.6+ and ``KEXEC_UPDATE_ELFCOREHDR``) the kernel
rewrites the header itself, so region 0 gets only a structural check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

from kdumpd.arch.x86_64 import EM_X86_64
from kdumpd.arch.x86_64.bootparams import (
    E820_ENTRIES,
    E820_ENTRY,
    E820_TABLE,
    boot_params_size,
    build_boot_params,
    capture_cmdline,
    capture_e820,
    check_cmdline,
    running_rsdp,
)
from kdumpd.arch.x86_64.bzimage import ENTRY64_OFFSET, read_setup_header
from kdumpd.arch.x86_64.purgatory import Purgatory, RegionFlag, purgatory_blob
from kdumpd.core.errors import InputError, KdumpdError
from kdumpd.core.segment import (
    ELF_MAGIC,
    PAGE_SIZE,
    Buffer,
    LoaderInputs,
    LoadPlan,
    Segment,
    SegmentKind,
    crash_window,
    page_align,
    validate_segments,
)
from kdumpd.core.topology import Topology

#: include/uapi/linux/kexec.h KEXEC_ARCH_X86_64 (EM_X86_64 << 16)
KEXEC_ARCH_X86_64 = EM_X86_64 << 16
MiB = 1 << 20
GiB = 1 << 30
#: The kernel's payload never goes below this, whatever pref_address says.
MIN_KERNEL_ADDRESS = 1 * MiB
# Headroom: an 8 KiB control page, a vmcoreinfo page, the top-level page-table pages
# and the mappings of ACPI/EFI tables fit in 1 MiB; without 1 GiB pages the identity
# map needs one page-middle-directory page (4 KiB) per GiB of physical address space,
# doubled for split regions.
HEADROOM_BASE = 1 * MiB
HEADROOM_PER_GIB = 8 * 1024

#: The setup sectors (at most 255, plus the boot sector) and one byte more: enough to
#: parse the setup header and to see that a payload follows it.
SETUP_READ = 256 * 512 + 1

REGION_ELFCOREHDR = 0
REGION_KERNEL = 1
REGION_BOOT_PARAMS = 2
REGION_INITRD = 3


class PurgatoryLike(Protocol):
    """The purgatory segment's buffer and header patcher
    (:class:`kdumpd.arch.x86_64.purgatory.Purgatory`)."""

    @property
    def buffer(self) -> bytearray: ...

    @property
    def memsz(self) -> int: ...

    def configure(self, *, boot_params: int, kernel_entry: int) -> None: ...

    def set_region(
        self,
        index: int,
        start: int,
        data: Buffer,
        flags: RegionFlag = ...,
        *,
        digest: bytes | None = ...,
    ) -> None: ...

    def update_digest(self, index: int, data: Buffer) -> None: ...


PurgatoryFactory = Callable[[bytes], PurgatoryLike]


def default_purgatory(blob: bytes) -> PurgatoryLike:
    """The real purgatory patcher; ``blob`` empty: the project's built blob (a missing
    build raises its one-line ``PurgatoryUnavailable``)."""
    return Purgatory(blob or purgatory_blob())


def headroom(topology: Topology) -> int:
    """Bytes to keep free at the bottom of the reservation (see the module doc)."""
    top = max((r.end + 1 for r in topology.iomem if r.name == "System RAM"), default=4 * GiB)
    gib = (top + GiB - 1) // GiB
    return page_align(HEADROOM_BASE + gib * HEADROOM_PER_GIB)


def set_header_region(purgatory: PurgatoryLike, hdr: Segment, *, in_place: bool) -> None:
    """Region 0: the elfcorehdr's digest, or (``in_place``: the kernel rewrites it)
    only its ELF shape, checked over the whole segment: the kernel may write up to
    ``memsz`` bytes there, more than our buffer when ``bufsz < memsz``."""
    if not in_place:
        purgatory.set_region(REGION_ELFCOREHDR, hdr.mem, hdr.buf)
        return
    whole = hdr.buf if hdr.bufsz == hdr.memsz else bytes(hdr.memsz)  # only its length counts
    purgatory.set_region(REGION_ELFCOREHDR, hdr.mem, whole, RegionFlag.ELF_STRUCTURAL)


def _down(value: int, align: int) -> int:
    return value // align * align


class X86SegmentImage:
    """A placed, validated x86_64 crash image (:class:`~kdumpd.core.segment.SegmentImage`)."""

    def __init__(
        self,
        plan: LoadPlan,
        purgatory: PurgatoryLike,
        elfcorehdr: Segment,
        *,
        kernel_entry: int,
        cmdline: bytes,
        hotplug: bool,
        digests: dict[SegmentKind, bytes] | None = None,
    ) -> None:
        self._plan = plan
        #: SHA-256 of the mapped-file segments, read through their descriptors at
        #: build time (their buffers are mappings: never read them here).
        self.digests = digests or {}
        self.purgatory = purgatory
        self.elfcorehdr = elfcorehdr
        self.kernel_entry = kernel_entry
        self.cmdline = cmdline
        self.hotplug = hotplug

    @property
    def plan(self) -> LoadPlan:
        return self._plan

    def refresh(self) -> None:
        if not self.hotplug:
            self.purgatory.update_digest(REGION_ELFCOREHDR, self.elfcorehdr.buf)

    def set_in_place(self, on: bool) -> None:
        if on == self.hotplug:
            return
        self.hotplug = on
        set_header_region(self.purgatory, self.elfcorehdr, in_place=on)

    def manifest(self) -> list[dict[str, object]]:
        return [
            {
                "kind": str(s.kind),
                "mem": f"{s.mem:#x}",
                "memsz": s.memsz,
                "bufsz": s.bufsz,
                "sha256": self.digests.get(s.kind, b"").hex() or hashlib.sha256(s.buf).hexdigest(),
                "entry": self._plan.entry if s.kind == SegmentKind.PURGATORY else None,
            }
            for s in self._plan.segments
        ]


class X86ImageBuilder:
    """:class:`~kdumpd.core.segment.ImageBuilder` for x86_64."""

    def __init__(
        self, purgatory_factory: PurgatoryFactory | None = None, *, hotplug: bool = False
    ) -> None:
        self.purgatory_factory = purgatory_factory or default_purgatory
        self.hotplug = hotplug

    def build(
        self, inputs: LoaderInputs, topology: Topology, elfcorehdr: Segment
    ) -> X86SegmentImage:
        name = inputs.kernel_name
        window = crash_window(topology.crashkernel)
        if window is None:
            raise KdumpdError("no Crash kernel reservation in /proc/iomem; nothing can be loaded")
        # A mapped file is read through its descriptor, never through the mapping
        # (LoaderInputs.kernel_file): the mapping only becomes a segment buffer.
        kernel_file, initrd_file = inputs.kernel_file, inputs.initrd_file
        head = inputs.kernel if kernel_file is None else kernel_file.pread(SETUP_READ)
        setup = read_setup_header(head, name)
        check_cmdline(setup, inputs.cmdline, name)
        if bytes(elfcorehdr.buf[:4]) != ELF_MAGIC:
            raise InputError("elfcorehdr", "the buffer does not hold an ELF header")
        purgatory = self.purgatory_factory(inputs.purgatory)
        payload = memoryview(inputs.kernel)[setup.payload_offset :]
        kernel_memsz = page_align(max(setup.init_size, len(payload)))
        cmdline = capture_cmdline(elfcorehdr.mem, inputs.cmdline)
        e820 = capture_e820(topology.iomem, window, elfcorehdr.range)
        bp_memsz = page_align(boot_params_size(cmdline, e820))
        initrd = inputs.initrd
        initrd_memsz = page_align(len(initrd)) if initrd is not None and len(initrd) else 0
        room = headroom(topology)

        def too_small() -> KdumpdError:
            need = (
                elfcorehdr.memsz
                + page_align(purgatory.memsz)
                + bp_memsz
                + initrd_memsz
                + kernel_memsz
                + setup.kernel_alignment
                + room
            )
            return KdumpdError(
                f"Crash kernel {window.start:#x}-{window.end:#x} ({window.size // MiB} MiB) is "
                f"too small for this crash image: it needs about {(need + MiB - 1) // MiB} MiB "
                f"(kernel init_size {kernel_memsz // MiB} MiB, initrd {initrd_memsz // MiB} MiB, "
                f"{room // 1024} KiB headroom); raise crashkernel= (the loaded image is unchanged)"
            )

        top = elfcorehdr.mem
        if not window.start <= top <= window.end:
            raise KdumpdError(f"elfcorehdr {top:#x} is not inside Crash kernel")
        pur_mem = _down(top - page_align(purgatory.memsz), PAGE_SIZE)
        bp_mem = pur_mem - bp_memsz
        initrd_mem = bp_mem - initrd_memsz
        floor = max(setup.pref_address, MIN_KERNEL_ADDRESS, window.start + room)
        kernel_mem = _down(initrd_mem - kernel_memsz, setup.kernel_alignment)
        if kernel_mem < floor or kernel_mem < window.start:
            raise too_small()

        bp = build_boot_params(
            head,
            setup,
            mem=bp_mem,
            cmdline=cmdline,
            initrd=(initrd_mem, len(initrd)) if initrd_memsz and initrd is not None else None,
            e820=e820,
            acpi_rsdp=running_rsdp(inputs.boot_params),
        )
        kernel_entry = kernel_mem + ENTRY64_OFFSET
        purgatory.configure(boot_params=bp_mem, kernel_entry=kernel_entry)
        set_header_region(purgatory, elfcorehdr, in_place=self.hotplug)
        heads: dict[SegmentKind, bytes] = {}
        digests: dict[SegmentKind, bytes] = {}
        if kernel_file is not None:
            digests[SegmentKind.KERNEL] = kernel_file.sha256(setup.payload_offset)
            heads[SegmentKind.KERNEL] = bytes(head[setup.payload_offset :][:4])
        purgatory.set_region(
            REGION_KERNEL, kernel_mem, payload, digest=digests.get(SegmentKind.KERNEL)
        )
        purgatory.set_region(REGION_BOOT_PARAMS, bp_mem, bp)
        segments = [
            elfcorehdr,
            Segment(SegmentKind.PURGATORY, pur_mem, page_align(purgatory.memsz), purgatory.buffer),
            Segment(SegmentKind.SETUP, bp_mem, bp_memsz, bp),
        ]
        if initrd_memsz and initrd is not None:
            if initrd_file is not None:
                digests[SegmentKind.INITRD] = initrd_file.sha256()
                heads[SegmentKind.INITRD] = initrd_file.pread(4)
            purgatory.set_region(
                REGION_INITRD, initrd_mem, initrd, digest=digests.get(SegmentKind.INITRD)
            )
            segments.append(Segment(SegmentKind.INITRD, initrd_mem, initrd_memsz, initrd))
        segments.append(Segment(SegmentKind.KERNEL, kernel_mem, kernel_memsz, payload))
        plan = LoadPlan(tuple(segments), pur_mem, KEXEC_ARCH_X86_64)
        validate_segments(
            plan.segments,
            plan.entry,
            window,
            headroom=room,
            source=f"crash image for {name}",
            heads=heads,
        )
        if not any(s.mem <= kernel_entry < s.mem + s.memsz for s in segments):
            raise InputError(name, "kernel entry is outside the kernel segment")
        return X86SegmentImage(
            plan,
            purgatory,
            elfcorehdr,
            kernel_entry=kernel_entry,
            cmdline=cmdline,
            hotplug=self.hotplug,
            digests=digests,
        )


def unpack_e820(buf: Buffer) -> list[tuple[int, int, int]]:
    """The e820 table of a boot_params page (for inspection and tests)."""
    n = buf[E820_ENTRIES]
    return [E820_ENTRY.unpack_from(buf, E820_TABLE + E820_ENTRY.size * i) for i in range(n)]
