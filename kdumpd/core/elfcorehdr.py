"""The elfcorehdr: an ELF64 ``ET_CORE`` header written into a fixed-capacity buffer.

The capture kernel finds the first kernel's memory and CPU state through this
header (``elfcorehdr=`` on its command line).  Its layout follows kexec-tools
(kexec/crashdump-elf.c; docs/kernel-interfaces.md §5):

* ``Elf64_Ehdr`` at offset 0: ``ET_CORE``, the arch's ``e_machine``,
  ``e_phoff`` = 64 (0 in the degenerate header without phdrs, as ELF requires),
  ``e_phentsize`` = 56, ``e_phnum`` = headers actually written, no section headers;
* the program headers, in this order:

  1. one ``PT_NOTE`` per CPU (ascending CPU number): ``p_offset`` = ``p_paddr`` =
     the CPU's ``crash_notes`` address, ``p_filesz`` = ``p_memsz`` =
     ``crash_notes_size``, everything else 0;
  2. the vmcoreinfo ``PT_NOTE`` (same shape) when the kernel exports it;
  3. the kernel-text ``PT_LOAD`` (``PF_R|PF_W|PF_X``): ``p_offset`` = ``p_paddr`` =
     start of ``Kernel code``, ``p_vaddr`` and size from the kcore text segment;
  4. one ``PT_LOAD`` per crash memory range (ascending): ``p_offset`` =
     ``p_paddr`` = start, ``p_vaddr`` = ``page_offset + start`` (mod 2**64, as the
     C arithmetic wraps), ``p_filesz`` = ``p_memsz`` = range size;

* zeros up to the end of the buffer.

The buffer is allocated once (:class:`Elfcorehdr`) and every :meth:`Elfcorehdr.write`
rewrites it in place: its length never changes and the ``bytearray`` object is never
replaced, because the daemon gives its address and size to the kernel once at load
time.  A header that does not fit raises :class:`~kdumpd.core.errors.CapacityError`
*before* a single byte changes, so the previous good header survives.

Speed: one ``Elf64_Phdr`` is seven little-endian u64 words (``p_type | p_flags <<
32``, ``p_offset``, ``p_vaddr``, ``p_paddr``, ``p_filesz``, ``p_memsz``,
``p_align``), so the program headers are written column by column: each field of
all CPU notes (or all RAM loads) is one ``array('Q')`` stored with one strided slice
assignment into a u64 view of the buffer.  8,192 CPUs + 8,192 ranges take about
1.3 ms; see ``bench/elfcorehdr.py`` and docs/performance.md.
"""

from __future__ import annotations

import operator
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from kdumpd.core.errors import CapacityError, InputError, UnsupportedError
from kdumpd.core.ranges import round_up
from kdumpd.core.segment import ELF_MAGIC
from kdumpd.core.topology import CrashNote, MemRange, VmcoreInfo

# ELF constants (include/uapi/linux/elf.h, elf(5)).
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ELFOSABI_NONE = 0
ET_CORE = 4
PT_LOAD = 1
PT_NOTE = 4
PF_X = 0x1
PF_W = 0x2
PF_R = 0x4
PN_XNUM = 0xFFFF  # e_phnum values from here on need extended numbering (unsupported)

EHDR_SIZE = 64  # sizeof(Elf64_Ehdr)
PHDR_SIZE = 56  # sizeof(Elf64_Phdr)
ELF_CORE_HEADER_ALIGN = 1024  # kexec-tools kexec/crashdump.h

_WORDS_PER_PHDR = PHDR_SIZE // 8  # 7
_U64_MAX = (1 << 64) - 1
_BYTESWAP = sys.byteorder != "little"  # ELFDATA2LSB on a big-endian host
_LOAD_TYPE_FLAGS = PT_LOAD | (PF_R | PF_W | PF_X) << 32  # first u64 of a PT_LOAD phdr
_NOTE_TYPE_FLAGS = PT_NOTE  # p_flags = 0

# e_ident(16) e_type e_machine e_version e_entry e_phoff e_shoff e_flags e_ehsize
# e_phentsize e_phnum e_shentsize e_shnum e_shstrndx
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_E_IDENT = ELF_MAGIC + bytes((ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_NONE)) + bytes(8)
assert _EHDR.size == EHDR_SIZE


def elfcorehdr_capacity(max_cpus: int, max_ranges: int) -> int:
    """Bytes needed for a header with ``max_cpus`` CPU notes and ``max_ranges`` RAM loads.

    ``64`` (Elf64_Ehdr) + (``max_cpus`` CPU PT_NOTEs + 1 vmcoreinfo PT_NOTE + 1
    kernel-text PT_LOAD + ``max_ranges`` RAM PT_LOADs) * 56 (Elf64_Phdr), rounded up
    to 1024 (``ELF_CORE_HEADER_ALIGN``), as kexec-tools sizes its buffer.
    Example: 8192 CPUs + 8192 ranges → 64 + 16386 * 56 = 917,680 → 918,528 bytes.
    """
    if max_cpus < 0 or max_ranges < 0:
        raise ValueError(f"negative elfcorehdr sizing: cpus={max_cpus} ranges={max_ranges}")
    return round_up(EHDR_SIZE + (max_cpus + 2 + max_ranges) * PHDR_SIZE, ELF_CORE_HEADER_ALIGN)


@dataclass(frozen=True, slots=True)
class ElfNotes:
    """The PT_NOTEs: per-CPU ``crash_notes`` (any order, written ascending) and vmcoreinfo."""

    cpus: Sequence[CrashNote]
    vmcoreinfo: VmcoreInfo | None = None


@dataclass(frozen=True, slots=True)
class KernelTextLoad:
    """The kernel-text PT_LOAD: physical start of ``Kernel code``, virtual start, size."""

    paddr: int
    vaddr: int
    size: int


@dataclass(frozen=True, slots=True)
class ElfLoads:
    """The PT_LOADs: kernel text (optional) and RAM ranges (ascending, disjoint)."""

    ram: Sequence[MemRange]
    page_offset: int
    kernel_text: KernelTextLoad | None = None


@dataclass(frozen=True, slots=True)
class HeaderLayout:
    """What the last successful :meth:`Elfcorehdr.write` put into the buffer.

    ``notes``/``loads`` count program headers of each type (``notes`` includes the
    vmcoreinfo note, ``loads`` the kernel-text load); ``used`` is the number of
    meaningful bytes (Ehdr + phdrs), ``capacity`` the fixed buffer length.
    """

    notes: int
    loads: int
    used: int
    capacity: int
    cpus: tuple[int, ...]
    ranges: tuple[MemRange, ...]
    vmcoreinfo: bool = False
    kernel_text: bool = False

    @property
    def phnum(self) -> int:
        return self.notes + self.loads


class Elfcorehdr:
    """An ELF64 core header living in one preallocated, fixed-length ``bytearray``."""

    __slots__ = ("_buffer", "_layout", "_machine", "_view", "_words", "_zeros")

    def __init__(self, capacity: int, machine: int) -> None:
        if capacity < EHDR_SIZE or capacity % 8:
            raise ValueError(f"elfcorehdr capacity {capacity} must be >= 64 and a multiple of 8")
        if not 0 <= machine <= 0xFFFF:
            raise ValueError(f"e_machine {machine} out of range")
        self._buffer = bytearray(capacity)
        # An exported buffer cannot be resized: any accidental length change of
        # ``buffer`` raises BufferError instead of silently reallocating it.
        self._view = memoryview(self._buffer)
        self._words = self._view.cast("Q")  # native order; columns are swapped if needed
        self._zeros = memoryview(bytes(capacity))  # source for zero-filling the tail
        self._machine = machine
        self._layout: HeaderLayout | None = None

    @property
    def buffer(self) -> bytearray:
        """The header bytes: always this object, always ``capacity`` long."""
        return self._buffer

    @property
    def layout(self) -> HeaderLayout | None:
        """What the last successful :meth:`write` wrote (``None`` before the first)."""
        return self._layout

    @property
    def capacity(self) -> int:
        return len(self._view)

    @property
    def machine(self) -> int:
        return self._machine

    def write(self, notes: ElfNotes, loads: ElfLoads) -> HeaderLayout:
        """Rewrite the buffer in place with these notes and loads.

        Raises :class:`CapacityError` (buffer untouched) when the header does not fit,
        :class:`InputError` (buffer untouched) for values that are not valid u64s, a
        CPU with two notes, or memory ranges that are not ascending and disjoint.
        CPU notes are written in ascending CPU order whatever order they come in.
        """
        cpu_notes = notes.cpus
        ram = loads.ram
        n_cpu = len(cpu_notes)
        n_ram = len(ram)
        has_vmci = notes.vmcoreinfo is not None
        text = loads.kernel_text
        n_notes = n_cpu + has_vmci
        n_loads = n_ram + (text is not None)
        phnum = n_notes + n_loads
        used = EHDR_SIZE + phnum * PHDR_SIZE
        capacity = len(self._view)
        if used > capacity:
            raise CapacityError(
                f"elfcorehdr ({n_cpu} cpu notes, {n_ram} memory ranges)", used, capacity
            )
        if phnum >= PN_XNUM:
            raise UnsupportedError(
                f"elfcorehdr: {phnum} program headers need ELF extended numbering"
            )

        cpus = [n.cpu for n in cpu_notes]
        if n_cpu > 1 and not all(map(operator.lt, cpus, cpus[1:])):
            # kexec-tools writes them by ascending CPU number; put them in order (rare: the reader
            # already delivers them sorted), but a CPU twice is a bug upstream.
            if len(set(cpus)) != n_cpu:
                raise InputError("elfcorehdr", "a CPU has more than one crash note")
            cpu_notes = sorted(cpu_notes, key=operator.attrgetter("cpu"))
            cpus = [n.cpu for n in cpu_notes]
        starts = [r.start for r in ram]
        stops = [r.end + 1 for r in ram]  # exclusive ends
        if n_ram > 1 and not all(map(operator.le, stops, starts[1:])):
            raise InputError("elfcorehdr", "memory ranges are not ascending and disjoint")

        # Assemble every u64 column first (array() raises OverflowError for values
        # that are negative or >= 2**64), so a bad value leaves the buffer untouched.
        # Word i of phdr k lives at u64 index 8 + 7k + i of the buffer.
        columns: list[tuple[slice, array[int]]] = []
        try:
            at = EHDR_SIZE // 8
            if n_cpu:
                stop = at + n_cpu * _WORDS_PER_PHDR
                addrs = array("Q", [n.address for n in cpu_notes])
                sizes = array("Q", [n.size for n in cpu_notes])
                zeros = array("Q", (0,)) * n_cpu
                columns += (
                    (slice(at, stop, 7), array("Q", (_NOTE_TYPE_FLAGS,)) * n_cpu),
                    (slice(at + 1, stop, 7), addrs),  # p_offset
                    (slice(at + 2, stop, 7), zeros),  # p_vaddr
                    (slice(at + 3, stop, 7), addrs),  # p_paddr
                    (slice(at + 4, stop, 7), sizes),  # p_filesz
                    (slice(at + 5, stop, 7), sizes),  # p_memsz
                    (slice(at + 6, stop, 7), zeros),  # p_align
                )
                at = stop
            if notes.vmcoreinfo is not None:
                v = notes.vmcoreinfo
                row = (_NOTE_TYPE_FLAGS, v.address, 0, v.address, v.size, v.size, 0)
                columns.append((slice(at, at + 7), array("Q", row)))
                at += 7
            if text is not None:
                row = (
                    _LOAD_TYPE_FLAGS,
                    text.paddr,
                    text.vaddr,
                    text.paddr,
                    text.size,
                    text.size,
                    0,
                )
                columns.append((slice(at, at + 7), array("Q", row)))
                at += 7
            if n_ram:
                stop = at + n_ram * _WORDS_PER_PHDR
                page_offset = loads.page_offset
                pstart = array("Q", starts)
                psize = array("Q", list(map(operator.sub, stops, starts)))
                if page_offset >= 0 and page_offset + starts[-1] <= _U64_MAX:
                    vaddrs = array("Q", list(map(page_offset.__add__, starts)))
                else:  # wraps around like the C unsigned arithmetic
                    vaddrs = array("Q", [(page_offset + s) & _U64_MAX for s in starts])
                columns += (
                    (slice(at, stop, 7), array("Q", (_LOAD_TYPE_FLAGS,)) * n_ram),
                    (slice(at + 1, stop, 7), pstart),  # p_offset
                    (slice(at + 2, stop, 7), vaddrs),  # p_vaddr
                    (slice(at + 3, stop, 7), pstart),  # p_paddr
                    (slice(at + 4, stop, 7), psize),  # p_filesz
                    (slice(at + 5, stop, 7), psize),  # p_memsz
                    (slice(at + 6, stop, 7), array("Q", (0,)) * n_ram),  # p_align
                )
        except OverflowError as err:
            raise InputError("elfcorehdr", f"a value does not fit an ELF64 field: {err}") from None
        ehdr = _EHDR.pack(
            _E_IDENT,
            ET_CORE,
            self._machine,
            EV_CURRENT,
            0,  # e_entry
            EHDR_SIZE if phnum else 0,  # e_phoff (0 = no program header table, per ELF)
            0,  # e_shoff
            0,  # e_flags
            EHDR_SIZE,  # e_ehsize
            PHDR_SIZE,  # e_phentsize
            phnum,
            0,  # e_shentsize
            0,  # e_shnum
            0,  # e_shstrndx
        )

        # Everything is validated and assembled: only now touch the buffer.
        view = self._view
        view[0:EHDR_SIZE] = ehdr
        if _BYTESWAP:  # swap each distinct array once (some feed two columns)
            for column in {id(c): c for _, c in columns}.values():
                column.byteswap()
        words = self._words
        for where, column in columns:
            words[where] = column
        # Zero the whole tail, not just what the previous header used: nothing stale
        # may survive even if someone scribbled on ``buffer`` (a ~1 MiB memcpy, ~50 us).
        view[used:] = self._zeros[used:]

        layout = HeaderLayout(
            notes=n_notes,
            loads=n_loads,
            used=used,
            capacity=capacity,
            cpus=tuple(cpus),
            ranges=tuple(ram),
            vmcoreinfo=has_vmci,
            kernel_text=text is not None,
        )
        self._layout = layout
        return layout
