"""Kernel facts that do not change until the next boot: the architecture, where the
kernel text sits and the direct-map base (``PAGE_OFFSET``).

This module reads the files (``/proc/kcore``'s program headers, ``/proc/kallsyms``,
``/proc/sys/kernel/arch``); what the numbers mean for the kernel text and
``PAGE_OFFSET`` is x86_64 knowledge and lives in
:mod:`kdumpd.arch.x86_64.kerneltext` (sources ``kcore``, ``kcore-range``,
``kallsyms``, ``kallsyms-estimate``).  Without kcore ``page_offset`` is the x86_64
default (``None`` on other architectures).  Kallsyms with all-zero addresses
(``kptr_restrict``, non-root) counts as absent.
"""

from __future__ import annotations

import logging
import platform
import re
import struct
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.construct import ConstructError
from elftools.elf.structs import ELFStructs

from kdumpd.arch.x86_64 import X86_64_PAGE_OFFSET
from kdumpd.arch.x86_64.kerneltext import kernel_text as x86_kernel_text
from kdumpd.core.errors import InputError
from kdumpd.core.segment import ELF_MAGIC
from kdumpd.core.topology import KernelText
from kdumpd.system.sysroot import Sysroot, one_line

__all__ = ["KernelFacts", "read_kernel_facts"]

log = logging.getLogger("kdumpd.system.kernelfacts")

KCORE = "/proc/kcore"
KALLSYMS = "/proc/kallsyms"
ARCH = "/proc/sys/kernel/arch"
#: Only the ELF and program headers of /proc/kcore are read (kexec-tools reads as much).
KCORE_ELF_HEADERS_SIZE = 64 << 10

_EM_TO_ARCH = {
    "EM_X86_64": "x86_64",
    "EM_PPC64": "ppc64le",
    "EM_AARCH64": "aarch64",
    "EM_RISCV": "riscv64",
    "EM_S390": "s390x",
}
_KALLSYMS_LINE = re.compile(r"[0-9a-fA-F]+ \S+ \S+(?:\s+\[\S+\])?")
_HEX = re.compile(r"[0-9a-fA-F]+")
# Built-in (no "[module]" field) symbols inside the x86_64 kernel image mapping
# [0xffffffff80000000, +1 GiB).
_KALLSYMS_IMAGE = re.compile(r"^(ffffffff[89ab][0-9a-f]{7}) \S+ \S+$", re.MULTILINE)

KcoreLoads = tuple[list[tuple[int, int]], str | None]


@dataclass(frozen=True, slots=True)
class KernelFacts:
    """What cannot change while the kernel runs.  Reading kallsyms costs ~60 ms on a
    distribution kernel, ~95 % of a snapshot, so a long-running reader keeps these."""

    arch: str
    kernel_text: KernelText | None
    page_offset: int | None


def read_kernel_facts(root: Sysroot, arch: str | None = None) -> KernelFacts:
    """The facts of the kernel below ``root``; ``arch`` overrides the detected one."""
    kcore = _kcore_loads(root)
    syms, highest = _kallsyms(root)
    kernel_text, page_offset = x86_kernel_text(kcore[0] if kcore else None, syms, highest)
    the_arch = _arch(root, arch, kcore[1] if kcore else None)
    if page_offset is None and the_arch == "x86_64":
        page_offset = X86_64_PAGE_OFFSET
    return KernelFacts(the_arch, kernel_text, page_offset)


def _kallsyms(root: Sysroot) -> tuple[dict[str, int], int | None]:
    """Selected symbols and the highest built-in symbol address in the kernel image.

    A host's kallsyms has ~100k lines, so only the lines we use are parsed (substring
    searches, plus one regular-expression scan when ``_end`` is missing); the first
    line is checked for the ``ADDR TYPE NAME`` shape so that a file which is not
    kallsyms at all is reported.
    """
    text = root.read(KALLSYMS)
    if text is None:
        return {}, None
    first = text.lstrip("\n").split("\n", 1)[0]
    if first and not _KALLSYMS_LINE.fullmatch(first):
        lineno = len(text) - len(text.lstrip("\n")) + 1
        raise InputError(KALLSYMS, f"expected 'ADDRESS TYPE NAME', found {first[:40]!r}", lineno)
    if not text.endswith("\n"):
        text += "\n"
    syms: dict[str, int] = {}
    for name in ("_text", "_stext", "_etext", "_end"):
        at = text.find(f" {name}\n")  # built-in symbols only: module lines end in "]"
        if at < 0:
            continue
        bol = text.rfind("\n", 0, at) + 1
        addr, _, kind = text[bol:at].partition(" ")
        if not _HEX.fullmatch(addr) or len(kind) != 1:
            lineno = text.count("\n", 0, bol) + 1
            raise InputError(KALLSYMS, f"expected 'ADDRESS TYPE {name}'", lineno)
        syms[name] = int(addr, 16)
    if syms and not any(syms.values()):
        log.info("%s: addresses are hidden (kptr_restrict); ignoring it", KALLSYMS)
        return {}, None
    highest: int | None = None
    if "_end" not in syms:
        # Fixed-width lower-case hex compares like the numbers it spells.
        image = _KALLSYMS_IMAGE.findall(text)
        highest = int(max(image), 16) if image else None
    return syms, highest


def _kcore_loads(root: Sysroot) -> KcoreLoads | None:
    """``(vaddr, memsz)`` of every kcore PT_LOAD and the ELF machine (``"EM_X86_64"``),
    or None if absent.  Only the headers are read, never the memory behind them."""
    try:
        data = root.read_bytes(KCORE, limit=KCORE_ELF_HEADERS_SIZE)
    except InputError as err:
        log.info("%s unreadable (%s); using the kallsyms fallback", KCORE, err.problem)
        return None
    if data is None or not data:
        return None
    if data[:4] != ELF_MAGIC:
        raise InputError(KCORE, "not an ELF file")
    try:
        structs = ELFStructs(little_endian=data[5] == 1, elfclass=64 if data[4] == 2 else 32)
        structs.create_basic_structs()
        ehdr = structs.Elf_Ehdr.parse(data)
        if ehdr["e_ident"]["EI_CLASS"] != "ELFCLASS64":
            raise InputError(KCORE, "not ELFCLASS64")
        structs.create_advanced_structs(
            ehdr["e_type"], ehdr["e_machine"], ehdr["e_ident"]["EI_OSABI"]
        )
        off, size = ehdr["e_phoff"], ehdr["e_phentsize"]
        if off + ehdr["e_phnum"] * size > len(data):
            raise ValueError(f"{ehdr['e_phnum']} program headers end past byte {len(data)}")
        loads = []
        for i in range(ehdr["e_phnum"]):
            phdr = structs.Elf_Phdr.parse(data[off + i * size : off + (i + 1) * size])
            if phdr["p_type"] == "PT_LOAD":
                loads.append((phdr["p_vaddr"], phdr["p_memsz"]))
        machine = ehdr["e_machine"]
    except (ELFError, ConstructError, struct.error, ValueError) as err:
        raise InputError(
            KCORE, f"program headers unreadable in the first {len(data)} bytes: {err}"
        ) from None
    return loads, machine if isinstance(machine, str) else None


def _arch(root: Sysroot, explicit: str | None, kcore_machine: str | None) -> str:
    if explicit:
        return explicit
    text = root.read(ARCH)
    if text is not None:
        return one_line(text, ARCH)
    if kcore_machine is not None and kcore_machine in _EM_TO_ARCH:
        return _EM_TO_ARCH[kcore_machine]
    if root.is_host:
        return platform.machine()
    raise InputError(ARCH, "missing and no /proc/kcore to tell the architecture; pass arch")
