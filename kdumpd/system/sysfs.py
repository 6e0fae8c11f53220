"""Read a :class:`~kdumpd.core.topology.Topology` snapshot from sysfs and procfs.

Every path is ``sysroot + the usual absolute path``, so the same code reads the
running machine (``sysroot="/"``) and a captured tree (``tests/fixtures/*``, made by
``tests/fixtures/capture_sysroot.sh``).  Errors name the file by its usual absolute
path (``/sys/devices/system/cpu/cpu3/crash_notes``), not the sysroot path.

What is read, and how the kernel prints it:

=============================================  =========================================
``/sys/devices/system/cpu/{possible,present,   cpulist, e.g. ``"0-3,8\\n"`` (required)
online}``
``/sys/devices/system/cpu/cpuN/crash_notes``   ``"%llx\\n"`` physical address, no ``0x``
``.../cpuN/crash_notes_size``                  ``"%zu\\n"``; absent → 1024 (MAX_NOTE_BYTES)
``/proc/iomem``                                :func:`kdumpd.core.iomem.parse_iomem`
                                               (required)
``/sys/kernel/vmcoreinfo``                     ``"%pa %x\\n"``: ``0x``-address, size in hex
``/proc/kcore`` (first 64 KiB)                 ELF program headers: PAGE_OFFSET and the
                                               kernel-text PT_LOAD
``/proc/kallsyms``                             ``_stext``/``_text``/``_end``
``/sys/devices/system/memory/block_size_bytes``  hex without ``0x``
``.../memory/memoryN/{state,online}``          ``"online\\n"``, ``"1\\n"``
``/proc/sys/kernel/arch``                      e.g. ``"x86_64\\n"``
``/sys/firmware/devicetree/base/cpus/*``       ppc64 only: every child node of ``/cpus``
(or ``/proc/device-tree/cpus``)                 (one file per property, raw bytes;
                                               ``Topology.dt_cpus``)
=============================================  =========================================

Capabilities (:func:`read_capabilities`, cheap enough to re-probe after every event):
``/sys/devices/system/{cpu,memory}/crash_hotplug`` (``"%d"``),
``/sys/kernel/crash_elfcorehdr_size`` (``"%u"``), ``/sys/kernel/kexec_crash_loaded``
(``"%d"``), ``/sys/kernel/kexec_crash_size`` (``"%zd"``; the read takes the kexec
lock and fails with EBUSY during a load → ``None``, logged), each also looked up under
the newer ``/sys/kernel/kexec/`` names; ``/proc/sys/kernel/osrelease``;
``/sys/kernel/security/lockdown`` (``"none [integrity] confidentiality"``: the active
mode is the bracketed word).

Kernel text (``Topology.kernel_text``), as kexec-tools' x86_64
``get_kernel_vaddr_and_size()`` finds it:

1. ``source="kcore"``: from the ``/proc/kcore`` program headers, the PT_LOAD that
   contains ``_stext`` (from ``/proc/kallsyms``); ``vaddr`` = its start aligned down
   to 1 MiB, ``size`` = (its end - ``vaddr``) rounded up to 4 KiB.  Without
   ``_stext``: the first PT_LOAD inside ``[0xffffffff80000000, +512 MiB)``
   (``source="kcore-range"``).
2. ``source="kallsyms"`` — the documented fallback when ``/proc/kcore`` is absent or
   unreadable (captured trees, containers, kernels without CONFIG_PROC_KCORE): the
   kcore text PT_LOAD is exactly ``[_text, _end)`` (fs/proc/kcore.c registers
   ``kclist_add(&kcore_text, _text, _end - _text)``), so ``_text`` (or ``_stext``)
   and ``_end`` from ``/proc/kallsyms`` give the same numbers.
3. ``source="kallsyms-estimate"``: kallsyms lacks ``_end`` (CONFIG_KALLSYMS_ALL=n
   lists text symbols only); the end is the highest built-in (non-module) symbol
   inside the kernel image area — an under-estimate of the data/bss end.

``page_offset`` is the lowest kcore PT_LOAD vaddr masked to 1 GiB (KASLR-aware);
without kcore it is the x86_64 default ``0xffff888000000000`` (``None`` on other
architectures).  Kallsyms with all-zero addresses (``kptr_restrict``, non-root) counts
as absent.

Malformed files raise :class:`~kdumpd.core.errors.InputError` naming the file and
line; missing optional files give ``None``.  Required files (the three cpulists and
``/proc/iomem``) raise when missing.  Per-CPU and per-block files are opened relative
to a directory descriptor, so an 8,192-CPU / 8,192-block tree costs one ``open`` +
``read`` per file and no path walks.
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.construct import ConstructError
from elftools.elf.structs import ELFStructs

from kdumpd.core.errors import InputError
from kdumpd.core.iomem import parse_iomem
from kdumpd.core.topology import (
    CrashNote,
    DtNode,
    KernelCapabilities,
    KernelText,
    MemoryBlock,
    Resource,
    Topology,
    VmcoreInfo,
)

__all__ = [
    "DEFAULT_CRASH_NOTES_SIZE",
    "X86_64_PAGE_OFFSET",
    "KernelFacts",
    "TopologyReader",
    "parse_cpulist",
    "read_capabilities",
    "read_crash_loaded",
    "read_topology",
]

log = logging.getLogger("kdumpd.system.sysfs")

CPU_DIR = "/sys/devices/system/cpu"
MEMORY_DIR = "/sys/devices/system/memory"
KCORE = "/proc/kcore"
KALLSYMS = "/proc/kallsyms"

#: Highest CPU number accepted in a cpulist (the kernel's NR_CPUS limit is 8192 on
#: x86_64; this bound only stops a corrupt file from allocating gigabytes).
MAX_CPU = (1 << 16) - 1
#: kexec-tools' MAX_NOTE_BYTES, used when ``crash_notes_size`` is absent (pre-4.10).
DEFAULT_CRASH_NOTES_SIZE = 1024
#: kexec-tools' default x86_64 PAGE_OFFSET (direct map base without KASLR).
X86_64_PAGE_OFFSET = 0xFFFF888000000000
X86_64_START_KERNEL_MAP = 0xFFFFFFFF80000000
X86_64_KERNEL_TEXT_SIZE = 512 << 20
KERNEL_VADDR_ALIGN = 1 << 20
PAGE_SIZE = 4096
KCORE_ELF_HEADERS_SIZE = 64 << 10
_GIB_MASK = ~((1 << 30) - 1) & ((1 << 64) - 1)

_PT_LOAD = 1
_EM_TO_ARCH = {
    "EM_X86_64": "x86_64",
    "EM_PPC64": "ppc64le",
    "EM_AARCH64": "aarch64",
    "EM_RISCV": "riscv64",
    "EM_S390": "s390x",
}
_CPU_NAME = re.compile(r"cpu(\d+)")
_MEMORY_NAME = re.compile(r"memory(\d+)")
_LOCKDOWN = re.compile(r"\[(\w+)\]")
_KALLSYMS_LINE = re.compile(r"[0-9a-fA-F]+ \S+ \S+(?:\s+\[\S+\])?")
_HEX = re.compile(r"[0-9a-fA-F]+")
_HEX_LINE = re.compile(rb"[0-9a-f]+\n?")
_DEC_LINE = re.compile(rb"[0-9]+\n?")
_STATE = re.compile(r"[a-z][a-z-]*")
# Built-in (no "[module]" field) symbols inside the x86_64 kernel image mapping
# [0xffffffff80000000, +1 GiB).
_KALLSYMS_IMAGE = re.compile(r"^(ffffffff[89ab][0-9a-f]{7}) \S+ \S+$", re.MULTILINE)

# --------------------------------------------------------------------------- files


#: Opens a file for binary reading; replaceable in tests (e.g. to raise EBUSY).
Opener = Callable[[str], BinaryIO]


def _open_binary(path: str) -> BinaryIO:
    return open(path, "rb")


class _Root:
    """Read files below one sysroot; errors name the usual absolute path."""

    def __init__(self, sysroot: str | Path, opener: Opener | None = None) -> None:
        root = os.fspath(sysroot)
        if not root:
            raise InputError("sysroot", "empty path (use / for the running system)")
        self.open: Opener = opener if opener is not None else _open_binary
        self.is_host = os.path.realpath(root) == "/"
        self.prefix = "" if self.is_host else root.rstrip("/")

    def path(self, abspath: str) -> str:
        return self.prefix + abspath

    def read(self, abspath: str, *, required: bool = False, limit: int = -1) -> str | None:
        """Text of a file, ``None`` when it does not exist (or raise if ``required``)."""
        data = self.read_bytes(abspath, required=required, limit=limit)
        if data is None:
            return None
        return _decode(data, abspath)

    def read_bytes(self, abspath: str, *, required: bool = False, limit: int = -1) -> bytes | None:
        try:
            with self.open(self.path(abspath)) as f:
                return f.read(limit)
        except (FileNotFoundError, NotADirectoryError):
            if required:
                raise InputError(abspath, "missing (not a kernel sysroot?)") from None
            return None
        except IsADirectoryError:
            raise InputError(abspath, "is a directory, expected a file") from None
        except PermissionError:
            raise InputError(abspath, "permission denied (root-only file; run as root)") from None
        except OSError as err:
            if err.errno == errno.EBUSY:
                log.info("%s: busy (kexec lock held); treated as absent", abspath)
                return None
            raise InputError(abspath, f"cannot read: {err.strerror or err}") from None


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise InputError(source, f"non-ASCII byte {data[err.start]:#04x}", line) from None


def _read_at(dir_fd: int, name: str, base: str) -> bytes | None:
    """Read a small file ``name`` relative to the directory fd of ``base`` (its usual
    absolute path, for errors); ``None`` if it does not exist."""
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        raise InputError(f"{base}/{name}", "permission denied (root-only; run as root)") from None
    except OSError as err:
        raise InputError(f"{base}/{name}", f"cannot open: {err.strerror or err}") from None
    try:
        return os.read(fd, 4096)
    except OSError as err:
        if err.errno == errno.EBUSY:
            log.info("%s/%s: busy; treated as absent", base, name)
            return None
        raise InputError(f"{base}/{name}", f"cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)


def _one_line(text: str, source: str) -> str:
    """The single line of a one-value sysfs file, without its newline."""
    line, _, rest = text.partition("\n")
    if rest.strip():
        raise InputError(source, "expected one line, found more", 2)
    if not line.strip():
        raise InputError(source, "empty", 1)
    return line.strip()


def _int(text: str, source: str, base: int, what: str) -> int:
    value = _one_line(text, source)
    try:
        n = int(value, base)
    except ValueError:
        raise InputError(source, f"expected {what}, found {value[:40]!r}", 1) from None
    if n < 0:
        raise InputError(source, f"expected {what}, found a negative number", 1)
    return n


def _hex(text: str, source: str, what: str = "a hexadecimal number") -> int:
    value = _one_line(text, source)
    if value.startswith(("0x", "0X", "+", "-", "_")) or "_" in value:
        raise InputError(source, f"expected {what} without 0x, found {value[:40]!r}", 1)
    return _int(value, source, 16, what)


def _dec(text: str, source: str, what: str = "a decimal number") -> int:
    value = _one_line(text, source)
    if not value.isdigit():
        raise InputError(source, f"expected {what}, found {value[:40]!r}", 1)
    return int(value)


def _bool01(text: str, source: str) -> bool:
    value = _one_line(text, source)
    if value not in ("0", "1"):
        raise InputError(source, f"expected 0 or 1, found {value[:40]!r}", 1)
    return value == "1"


# ------------------------------------------------------------------------ cpulists


def parse_cpulist(text: str, source: str) -> tuple[int, ...]:
    """Parse the kernel's cpulist format (``"0-3,8-11,16\\n"``; empty = no CPUs)."""
    line, _, rest = text.partition("\n")
    if rest.strip():
        raise InputError(source, "expected one line, found more", 2)
    line = line.strip()
    if not line:
        return ()
    cpus: list[int] = []
    last = -1
    for part in line.split(","):
        lo_s, dash, hi_s = part.partition("-")
        if not lo_s.isdigit() or (dash and not hi_s.isdigit()):
            raise InputError(source, f"bad cpulist element {part[:40]!r}", 1)
        lo = int(lo_s)
        hi = int(hi_s) if dash else lo
        if hi > MAX_CPU:
            raise InputError(source, f"CPU number {hi} is above {MAX_CPU}", 1)
        if hi < lo or lo <= last:
            raise InputError(source, f"cpulist is not ascending at {part[:40]!r}", 1)
        cpus.extend(range(lo, hi + 1))
        last = hi
    return tuple(cpus)


def _cpulist(root: _Root, name: str) -> tuple[int, ...]:
    path = f"{CPU_DIR}/{name}"
    text = root.read(path, required=True)
    assert text is not None
    return parse_cpulist(text, path)


# ----------------------------------------------------------------------- per entry


def _numbered_dirs(root: _Root, abspath: str, pattern: re.Pattern[str]) -> list[tuple[int, str]]:
    """``(N, name)`` of every ``<prefix>N`` directory below ``abspath``, ascending."""
    found: list[tuple[int, str]] = []
    try:
        with os.scandir(root.path(abspath)) as it:
            for entry in it:
                m = pattern.fullmatch(entry.name)
                if m and entry.is_dir():
                    found.append((int(m.group(1)), entry.name))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found.sort()
    return found


def _open_dir(root: _Root, abspath: str) -> int:
    try:
        return os.open(root.path(abspath), os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise InputError(abspath, f"cannot open: {err.strerror}") from None


def _crash_notes(root: _Root, cpus: Iterable[int]) -> tuple[CrashNote, ...]:
    wanted = set(cpus)
    dirs = [(n, name) for n, name in _numbered_dirs(root, CPU_DIR, _CPU_NAME) if n in wanted]
    if not dirs:
        return ()
    notes: list[CrashNote] = []
    base = _open_dir(root, CPU_DIR)
    try:
        for cpu, name in dirs:
            raw = _read_at(base, f"{name}/crash_notes", CPU_DIR)
            if raw is None:
                continue
            raw_size = _read_at(base, f"{name}/crash_notes_size", CPU_DIR)
            if _HEX_LINE.fullmatch(raw):  # fast path: what the kernel prints
                address = int(raw, 16)
            else:
                src = f"{CPU_DIR}/{name}/crash_notes"
                address = _hex(_decode(raw, src), src, "a hexadecimal physical address")
            if raw_size is None:
                size = DEFAULT_CRASH_NOTES_SIZE
            elif _DEC_LINE.fullmatch(raw_size) and int(raw_size):
                size = int(raw_size)
            else:
                ssrc = f"{CPU_DIR}/{name}/crash_notes_size"
                size = _dec(_decode(raw_size, ssrc), ssrc, "a size in bytes")
                if size == 0:
                    raise InputError(ssrc, "note size is 0", 1)
            notes.append(CrashNote(cpu, address, size))
    finally:
        os.close(base)
    return tuple(notes)


_STATES = {b"online\n": "online", b"offline\n": "offline"}
_ONLINE = {b"1\n": True, b"0\n": False}


def _memory_blocks(root: _Root) -> tuple[MemoryBlock, ...]:
    dirs = _numbered_dirs(root, MEMORY_DIR, _MEMORY_NAME)
    if not dirs:
        return ()
    blocks: list[MemoryBlock] = []
    base = _open_dir(root, MEMORY_DIR)
    try:
        for index, name in dirs:
            raw_state = _read_at(base, f"{name}/state", MEMORY_DIR)
            raw_online = _read_at(base, f"{name}/online", MEMORY_DIR)
            state = None if raw_state is None else _STATES.get(raw_state)
            if state is None and raw_state is not None:
                src = f"{MEMORY_DIR}/{name}/state"
                state = _one_line(_decode(raw_state, src), src)
                if not _STATE.fullmatch(state):
                    raise InputError(src, f"unexpected state {state[:40]!r}", 1)
            online = None if raw_online is None else _ONLINE.get(raw_online)
            if online is None and raw_online is not None:
                src = f"{MEMORY_DIR}/{name}/online"
                online = _bool01(_decode(raw_online, src), src)
            blocks.append(MemoryBlock(index, state, online))
    finally:
        os.close(base)
    return tuple(blocks)


# ---------------------------------------------------------------------- vmcoreinfo


def _vmcoreinfo(root: _Root) -> VmcoreInfo | None:
    path = "/sys/kernel/vmcoreinfo"
    text = root.read(path)
    if text is None:
        return None
    fields = _one_line(text, path).split()
    if len(fields) != 2:
        raise InputError(path, "expected 'ADDRESS SIZE' (\"%pa %x\")", 1)
    try:
        address = int(fields[0], 16)
        size = int(fields[1], 16)
    except ValueError:
        raise InputError(path, "expected hexadecimal 'ADDRESS SIZE'", 1) from None
    if address < 0 or size <= 0:
        raise InputError(path, "address or size out of range", 1)
    return VmcoreInfo(address, size)


# -------------------------------------------------------------- kallsyms and kcore


def _kallsyms(root: _Root) -> tuple[dict[str, int], int | None]:
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


def _kcore_loads(root: _Root) -> tuple[list[tuple[int, int]], str | None] | None:
    """``(vaddr, memsz)`` of every kcore PT_LOAD and the ELF machine (``"EM_X86_64"``),
    or None if absent.  Only the first 64 KiB are read (kexec-tools'
    KCORE_ELF_HEADERS_SIZE): the program headers, never the memory behind them."""
    try:
        data = root.read_bytes(KCORE, limit=KCORE_ELF_HEADERS_SIZE)
    except InputError as err:
        log.info("%s unreadable (%s); using the kallsyms fallback", KCORE, err.problem)
        return None
    if data is None or not data:
        return None
    if data[:4] != b"\x7fELF":
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


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


def _text_from_segment(vaddr: int, memsz: int, source: str) -> KernelText:
    start = vaddr & ~(KERNEL_VADDR_ALIGN - 1)
    return KernelText(start, _align_up(vaddr + memsz - start, PAGE_SIZE), source)


def _kernel_text(
    kcore: tuple[list[tuple[int, int]], str | None] | None,
    syms: dict[str, int],
    highest: int | None,
) -> tuple[KernelText | None, int | None]:
    """Kernel text placement and PAGE_OFFSET (None when not derivable)."""
    stext = syms.get("_stext") or syms.get("_text")
    if kcore is not None and kcore[0]:
        loads = kcore[0]
        page_offset = min(v for v, _ in loads) & _GIB_MASK
        if stext:
            for vaddr, memsz in loads:
                if vaddr <= stext < vaddr + memsz:
                    return _text_from_segment(vaddr, memsz, "kcore"), page_offset
        top = X86_64_START_KERNEL_MAP + X86_64_KERNEL_TEXT_SIZE
        for vaddr, memsz in loads:
            if vaddr >= X86_64_START_KERNEL_MAP and vaddr + memsz <= top:
                return _text_from_segment(vaddr, memsz, "kcore-range"), page_offset
        return None, page_offset
    text = syms.get("_text") or stext
    if not text:
        return None, None
    if syms.get("_end"):
        return _text_from_segment(text, syms["_end"] - text, "kallsyms"), None
    if highest is not None and highest > text:
        return _text_from_segment(text, highest - text, "kallsyms-estimate"), None
    return None, None


# ---------------------------------------------------------------------- capability


def _first(root: _Root, *paths: str) -> tuple[str, str] | None:
    for p in paths:
        text = root.read(p)
        if text is not None:
            return p, text
    return None


def read_capabilities(
    sysroot: str | Path = "/", *, opener: Opener | None = None
) -> KernelCapabilities:
    """What the kernel below ``sysroot`` can do; absent files are ``None``.

    ``opener`` replaces ``open(path, "rb")`` (tests use it to make a read fail the way
    ``kexec_crash_size`` fails during a load).
    """
    root = _Root(sysroot, opener)
    return _capabilities(root)


#: ``!!kexec_crash_image``, read without the kexec lock; the second name is the newer
#: ``/sys/kernel/kexec/`` layout (old names kept as links, kexec-internals §4.1).
KEXEC_CRASH_LOADED = ("/sys/kernel/kexec_crash_loaded", "/sys/kernel/kexec/crash_loaded")


def read_crash_loaded(sysroot: str | Path = "/") -> bool | None:
    """Is a crash image loaded?  ``None`` when the kernel has no such file.

    The one lock-free question about the loaded image: unlike ``crash_hotplug`` and
    ``kexec_crash_size`` it never contends with a hotplug update, so status queries
    and post-load checks may ask it as often as they like."""
    root = _Root(sysroot)
    found = _first(root, *KEXEC_CRASH_LOADED)
    return None if found is None else _bool01(found[1], found[0])


def _capabilities(root: _Root) -> KernelCapabilities:
    def flag(*paths: str) -> bool | None:
        found = _first(root, *paths)
        return None if found is None else _bool01(found[1], found[0])

    def number(*paths: str) -> int | None:
        found = _first(root, *paths)
        return None if found is None else _dec(found[1], found[0])

    release_text = root.read("/proc/sys/kernel/osrelease")
    release = (
        None if release_text is None else _one_line(release_text, "/proc/sys/kernel/osrelease")
    )
    lockdown: str | None = None
    path = "/sys/kernel/security/lockdown"
    lockdown_text = root.read(path)
    if lockdown_text is not None:
        m = _LOCKDOWN.search(_one_line(lockdown_text, path))
        if m is None:
            raise InputError(path, "no [active] mode in brackets", 1)
        lockdown = m.group(1)
    return KernelCapabilities(
        release=release,
        cpu_crash_hotplug=flag(f"{CPU_DIR}/crash_hotplug"),
        memory_crash_hotplug=flag(f"{MEMORY_DIR}/crash_hotplug"),
        crash_elfcorehdr_size=number(
            "/sys/kernel/crash_elfcorehdr_size", "/sys/kernel/kexec/crash_elfcorehdr_size"
        ),
        kexec_crash_loaded=flag(*KEXEC_CRASH_LOADED),
        kexec_crash_size=number("/sys/kernel/kexec_crash_size", "/sys/kernel/kexec/crash_size"),
        lockdown=lockdown,
    )


# ------------------------------------------------------------------- device tree

DT_CPUS = "/sys/firmware/devicetree/base/cpus"
PROC_DEVICE_TREE = "/proc/device-tree"
#: Deepest node nesting below /cpus we follow (cpu and cache nodes are 1-2 deep).
_DT_MAX_DEPTH = 8


def _dt_cpus_dir(root: _Root) -> tuple[str, str] | None:
    """``(path below the sysroot, usual absolute path)`` of the live tree's ``/cpus``."""
    path = root.path(DT_CPUS)
    if os.path.isdir(path):
        return path, DT_CPUS
    # /proc/device-tree is a symlink to /sys/firmware/devicetree/base; in a captured
    # tree an absolute target must be resolved below the sysroot, not on the host.
    proc = root.path(PROC_DEVICE_TREE)
    try:
        target = os.readlink(proc)
    except OSError:
        target = None
    if target is not None and os.path.isabs(target):
        candidate = root.path(target.rstrip("/")) + "/cpus"
    else:
        candidate = proc + "/cpus"
    if os.path.isdir(candidate):
        return candidate, PROC_DEVICE_TREE + "/cpus"
    return None


def _dt_node(path: str, abspath: str, name: str, depth: int) -> DtNode:
    """One device-tree node directory: files are properties, directories children."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise InputError(abspath, f"cannot open: {err.strerror or err}") from None
    try:
        return _dt_node_at(fd, abspath, name, depth)
    finally:
        os.close(fd)


def _dt_node_at(fd: int, abspath: str, name: str, depth: int) -> DtNode:
    # Every property is one small file: open/read/close relative to the node's
    # directory descriptor (no path walks; ~2,000 nodes x 30 properties on big LPARs).
    try:
        with os.scandir(fd) as it:
            entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
    except OSError as err:
        raise InputError(abspath, f"cannot list: {err.strerror or err}") from None
    props: list[tuple[str, bytes]] = []
    children: list[DtNode] = []
    for entry, is_dir in entries:
        where = f"{abspath}/{entry}"
        if is_dir:
            if depth >= _DT_MAX_DEPTH:
                raise InputError(where, f"device tree nested deeper than {_DT_MAX_DEPTH}")
            try:
                sub = os.open(entry, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            except OSError as err:
                raise InputError(where, f"cannot open: {err.strerror or err}") from None
            try:
                children.append(_dt_node_at(sub, where, entry, depth + 1))
            finally:
                os.close(sub)
            continue
        try:
            pfd = os.open(entry, os.O_RDONLY, dir_fd=fd)
            try:
                chunks = [os.read(pfd, 65536)]
                while len(chunks[-1]) == 65536:
                    chunks.append(os.read(pfd, 65536))
            finally:
                os.close(pfd)
        except PermissionError:
            raise InputError(where, "permission denied") from None
        except OSError as err:
            raise InputError(where, f"cannot read: {err.strerror or err}") from None
        props.append((entry, chunks[0] if len(chunks) == 1 else b"".join(chunks)))
    return DtNode(name, tuple(props), tuple(children))


def _dt_cpus(root: _Root) -> tuple[DtNode, ...]:
    """Children of the live device tree's ``/cpus`` (``()`` without a device tree)."""
    found = _dt_cpus_dir(root)
    if found is None:
        return ()
    path, abspath = found
    return _dt_node(path, abspath, "cpus", 0).children


# --------------------------------------------------------------------------- arch


def _arch(root: _Root, explicit: str | None, kcore_machine: str | None) -> str:
    if explicit:
        return explicit
    path = "/proc/sys/kernel/arch"
    text = root.read(path)
    if text is not None:
        return _one_line(text, path)
    if kcore_machine is not None and kcore_machine in _EM_TO_ARCH:
        return _EM_TO_ARCH[kcore_machine]
    if root.is_host:
        return platform.machine()
    raise InputError(path, "missing and no /proc/kcore to tell the architecture; pass arch")


# ------------------------------------------------------------------------ topology


@dataclass(frozen=True, slots=True)
class KernelFacts:
    """What cannot change while the kernel runs: its architecture and where its text
    and direct map sit (from ``/proc/kcore`` and ``/proc/kallsyms``).

    Reading kallsyms costs ~60 ms on a distribution kernel, ~95 % of a snapshot, so
    :class:`TopologyReader` reads these once and reuses them for every burst.
    """

    arch: str
    kernel_text: KernelText | None
    page_offset: int | None


def _kernel_facts(root: _Root, arch: str | None) -> KernelFacts:
    kcore = _kcore_loads(root)
    syms, highest = _kallsyms(root)
    kernel_text, page_offset = _kernel_text(kcore, syms, highest)
    the_arch = _arch(root, arch, kcore[1] if kcore else None)
    if page_offset is None and the_arch == "x86_64":
        page_offset = X86_64_PAGE_OFFSET
    return KernelFacts(the_arch, kernel_text, page_offset)


class TopologyReader:
    """Reads snapshots of one sysroot for a long-running caller (the daemon).

    Two things are read on the first call only and then reused:

    - the :class:`KernelFacts` (kcore, kallsyms): fixed until the next boot, and
      ~95 % of the cost of a snapshot;
    - the :class:`KernelCapabilities`: reading ``crash_hotplug`` and
      ``kexec_crash_size`` takes the kernel's kexec lock, and a hotplug update that
      finds the lock taken is *skipped* by the kernel (kexec-internals §4.5), so a
      reader in the burst path must not touch them.  Callers that need current
      values (a back-end verifying an update) use :func:`read_capabilities`.
    """

    def __init__(self, sysroot: str | Path = "/", *, arch: str | None = None) -> None:
        self.sysroot = sysroot
        self.arch = arch
        self._facts: KernelFacts | None = None
        self._capabilities: KernelCapabilities | None = None

    def __call__(self) -> Topology:
        return _read_topology(_Root(self.sysroot), self._kernel_facts, self._caps)

    def _kernel_facts(self, root: _Root) -> KernelFacts:
        if self._facts is None:
            self._facts = _kernel_facts(root, self.arch)
        return self._facts

    def _caps(self, root: _Root) -> KernelCapabilities:
        if self._capabilities is None:
            self._capabilities = _capabilities(root)
        return self._capabilities


def read_topology(sysroot: str | Path = "/", *, arch: str | None = None) -> Topology:
    """Read one consistent :class:`Topology` snapshot from ``sysroot``."""
    return TopologyReader(sysroot, arch=arch)()


def _check_addresses_visible(iomem: tuple[Resource, ...]) -> None:
    """Without CAP_SYS_ADMIN the kernel prints every /proc/iomem range as 0-0
    (kernel/resource.c ``r_show``); a header built from that would describe nothing."""
    if iomem and all(r.start == 0 and r.end == 0 for r in iomem):
        raise InputError(
            "/proc/iomem", "every address reads 0: the kernel hides them without CAP_SYS_ADMIN"
        )


def _read_topology(
    root: _Root,
    kernel_facts: Callable[[_Root], KernelFacts],
    capabilities: Callable[[_Root], KernelCapabilities],
) -> Topology:
    possible = _cpulist(root, "possible")
    present = _cpulist(root, "present")
    online = _cpulist(root, "online")

    iomem_text = root.read("/proc/iomem", required=True)
    assert iomem_text is not None
    iomem = parse_iomem(iomem_text, "/proc/iomem")
    _check_addresses_visible(iomem)
    facts = kernel_facts(root)

    crash_notes = _crash_notes(root, set(possible) | set(present))
    vmcoreinfo = _vmcoreinfo(root)

    block_size: int | None = None
    bs_path = f"{MEMORY_DIR}/block_size_bytes"
    bs_text = root.read(bs_path)
    if bs_text is not None:
        block_size = _hex(bs_text, bs_path, "a hexadecimal block size")
        if block_size == 0:
            raise InputError(bs_path, "block size is 0", 1)

    return Topology(
        arch=facts.arch,
        possible_cpus=possible,
        present_cpus=present,
        online_cpus=online,
        crash_notes=crash_notes,
        iomem=iomem,
        vmcoreinfo=vmcoreinfo,
        kernel_text=facts.kernel_text,
        page_offset=facts.page_offset,
        memory_block_size=block_size,
        memory_blocks=_memory_blocks(root),
        capabilities=capabilities(root),
        # Only ppc64 puts CPU nodes into the crash image (its FDT); other
        # architectures pay nothing for this.
        dt_cpus=_dt_cpus(root) if facts.arch.startswith("ppc64") else (),
    )
