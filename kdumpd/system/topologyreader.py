"""Read a :class:`~kdumpd.core.topology.Topology` snapshot from sysfs and procfs.

What is read, and how the kernel prints it:

=============================================  =========================================
``/sys/devices/system/cpu/{possible,present,   cpulist, e.g. ``"0-3,8\\n"`` (required)
online}``
``/sys/devices/system/cpu/cpuN/crash_notes``   ``"%llx\\n"`` physical address, no ``0x``
``.../cpuN/crash_notes_size``                  ``"%zu\\n"``; absent → 1024 (MAX_NOTE_BYTES)
``/proc/iomem``                                :func:`kdumpd.core.iomem.parse_iomem`
                                               (required)
``/sys/kernel/vmcoreinfo``                     ``"%pa %x\\n"``: ``0x``-address, size in hex
``/sys/devices/system/memory/block_size_bytes``  hex without ``0x``
``.../memory/memoryN/{state,online}``          ``"online\\n"``, ``"1\\n"``
kernel facts                                   :mod:`kdumpd.system.kernelfacts`
capabilities                                   :mod:`kdumpd.system.kexecsysfs`
``/cpus`` of the device tree (ppc64 only)      :mod:`kdumpd.system.devicetree`
=============================================  =========================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from kdumpd.core.errors import InputError
from kdumpd.core.iomem import parse_iomem
from kdumpd.core.topology import (
    CrashNote,
    KernelCapabilities,
    MemoryBlock,
    Resource,
    Topology,
    VmcoreInfo,
)
from kdumpd.system.devicetree import DT_CHOSEN, read_dt_cell, read_dt_cpus
from kdumpd.system.kernelfacts import KernelFacts, read_kernel_facts
from kdumpd.system.kexecsysfs import read_capabilities
from kdumpd.system.sysroot import (
    Sysroot,
    decode,
    one_line,
    parse_bool01,
    parse_cpulist,
    parse_dec,
    parse_hex,
    read_at,
)

__all__ = ["DEFAULT_CRASH_NOTES_SIZE", "TopologyReader", "read_topology"]

CPU_DIR = "/sys/devices/system/cpu"
MEMORY_DIR = "/sys/devices/system/memory"
IOMEM = "/proc/iomem"
VMCOREINFO = "/sys/kernel/vmcoreinfo"
#: kexec-tools' MAX_NOTE_BYTES, used when ``crash_notes_size`` is absent (pre-4.10).
DEFAULT_CRASH_NOTES_SIZE = 1024

_CPU_NAME = re.compile(r"cpu(\d+)")
_MEMORY_NAME = re.compile(r"memory(\d+)")
_HEX_LINE = re.compile(rb"[0-9a-f]{1,16}\n?")  # a 64-bit address
_DEC_LINE = re.compile(rb"[0-9]{1,19}\n?")  # fits 64 bits
_STATE = re.compile(r"[a-z][a-z-]*")
_STATES = {b"online\n": "online", b"offline\n": "offline"}
_ONLINE = {b"1\n": True, b"0\n": False}


class TopologyReader:
    """Reads snapshots of one sysroot for a long-running caller (the daemon).

    Two things are read on the first call only and then reused:

    - the :class:`~kdumpd.system.kernelfacts.KernelFacts` (kcore, kallsyms): fixed
      until the next boot, and ~95 % of the cost of a snapshot;
    - the :class:`KernelCapabilities`: reading ``crash_hotplug`` and
      ``kexec_crash_size`` takes the kexec lock (see :mod:`kdumpd.system.kexecsysfs`),
      so a reader in the burst path must not touch them again.  Callers that need
      current values use :func:`~kdumpd.system.kexecsysfs.read_capabilities`.
    """

    def __init__(self, sysroot: str | Path = "/", *, arch: str | None = None) -> None:
        self.sysroot = sysroot
        self.arch = arch
        self._facts: KernelFacts | None = None
        self._capabilities: KernelCapabilities | None = None

    def __call__(self) -> Topology:
        root = Sysroot(self.sysroot)
        possible = _cpulist(root, "possible")
        present = _cpulist(root, "present")
        online = _cpulist(root, "online")
        if self._facts is None:
            self._facts = read_kernel_facts(root, self.arch)
        facts = self._facts
        iomem = read_iomem(root, facts.arch)
        crash_notes = _crash_notes(root, set(possible) | set(present))
        vmcoreinfo = _vmcoreinfo(root)
        block_size = _block_size(root)
        memory_blocks = _memory_blocks(root)
        if self._capabilities is None:
            self._capabilities = read_capabilities(root)
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
            memory_blocks=memory_blocks,
            capabilities=self._capabilities,
            # Only ppc64 puts CPU nodes into the crash image (its FDT).
            dt_cpus=read_dt_cpus(root) if facts.arch.startswith("ppc64") else (),
        )


def read_iomem(root: Sysroot, arch: str) -> tuple[Resource, ...]:
    """``/proc/iomem``, with ppc64's crash reservation from the device tree added as
    the ``Crash kernel`` line other architectures have.  Takes no kernel lock (unlike
    a whole snapshot, whose ``kexec_crash_size`` read takes the kexec lock)."""
    text = root.read(IOMEM, required=True)
    assert text is not None
    iomem = parse_iomem(text, IOMEM)
    _check_addresses_visible(iomem)
    if arch.startswith("ppc64") and not any(r.name == "Crash kernel" for r in iomem):
        reserved = _dt_crashkernel(root)
        if reserved is not None:
            iomem = (*iomem, reserved)
    return iomem


def _dt_crashkernel(root: Sysroot) -> Resource | None:
    """ppc64: the ``crashkernel=`` reservation, which its /proc/iomem does not list; the
    kernel publishes it as ``/chosen/linux,crashkernel-{base,size}`` (big-endian
    cells).  Returned as the ``Crash kernel`` line /proc/iomem has elsewhere."""
    base = read_dt_cell(root, f"{DT_CHOSEN}/linux,crashkernel-base")
    if base is None:
        return None
    size = read_dt_cell(root, f"{DT_CHOSEN}/linux,crashkernel-size")
    if not size:
        return None
    return Resource(base, base + size - 1, "Crash kernel", 1)


def read_topology(sysroot: str | Path = "/", *, arch: str | None = None) -> Topology:
    """Read one consistent :class:`Topology` snapshot from ``sysroot``."""
    return TopologyReader(sysroot, arch=arch)()


def _cpulist(root: Sysroot, name: str) -> tuple[int, ...]:
    path = f"{CPU_DIR}/{name}"
    text = root.read(path, required=True)
    assert text is not None
    return parse_cpulist(text, path)


def _check_addresses_visible(iomem: tuple[Resource, ...]) -> None:
    """Without CAP_SYS_ADMIN the kernel prints every /proc/iomem range as 0-0
    (kernel/resource.c ``r_show``); a header built from that would describe nothing."""
    if iomem and all(r.start == 0 and r.end == 0 for r in iomem):
        raise InputError(
            IOMEM, "every address reads 0: the kernel hides them without CAP_SYS_ADMIN"
        )


def _crash_notes(root: Sysroot, cpus: Iterable[int]) -> tuple[CrashNote, ...]:
    wanted = set(cpus)
    dirs = [(n, name) for n, name in root.numbered_dirs(CPU_DIR, _CPU_NAME) if n in wanted]
    if not dirs:
        return ()
    notes: list[CrashNote] = []
    base = root.open_dir(CPU_DIR)
    try:
        for cpu, name in dirs:
            raw = read_at(base, f"{name}/crash_notes", CPU_DIR)
            if raw is None:
                continue
            raw_size = read_at(base, f"{name}/crash_notes_size", CPU_DIR)
            if _HEX_LINE.fullmatch(raw):  # fast path: what the kernel prints
                address = int(raw, 16)
            else:
                src = f"{CPU_DIR}/{name}/crash_notes"
                address = parse_hex(decode(raw, src), src, "a hexadecimal physical address")
            if raw_size is None:
                size = DEFAULT_CRASH_NOTES_SIZE
            elif _DEC_LINE.fullmatch(raw_size) and int(raw_size):
                size = int(raw_size)
            else:
                ssrc = f"{CPU_DIR}/{name}/crash_notes_size"
                size = parse_dec(decode(raw_size, ssrc), ssrc, "a size in bytes")
                if size == 0:
                    raise InputError(ssrc, "note size is 0", 1)
            notes.append(CrashNote(cpu, address, size))
    finally:
        os.close(base)
    return tuple(notes)


def _memory_blocks(root: Sysroot) -> tuple[MemoryBlock, ...]:
    dirs = root.numbered_dirs(MEMORY_DIR, _MEMORY_NAME)
    if not dirs:
        return ()
    blocks: list[MemoryBlock] = []
    base = root.open_dir(MEMORY_DIR)
    try:
        for index, name in dirs:
            raw_state = read_at(base, f"{name}/state", MEMORY_DIR)
            raw_online = read_at(base, f"{name}/online", MEMORY_DIR)
            state = None if raw_state is None else _STATES.get(raw_state)
            if state is None and raw_state is not None:
                src = f"{MEMORY_DIR}/{name}/state"
                state = one_line(decode(raw_state, src), src)
                if not _STATE.fullmatch(state):
                    raise InputError(src, f"unexpected state {state[:40]!r}", 1)
            online = None if raw_online is None else _ONLINE.get(raw_online)
            if online is None and raw_online is not None:
                src = f"{MEMORY_DIR}/{name}/online"
                online = parse_bool01(one_line(decode(raw_online, src), src), src)
            blocks.append(MemoryBlock(index, state, online))
    finally:
        os.close(base)
    return tuple(blocks)


def _vmcoreinfo(root: Sysroot) -> VmcoreInfo | None:
    text = root.read(VMCOREINFO)
    if text is None:
        return None
    fields = one_line(text, VMCOREINFO).split()
    if len(fields) != 2:
        raise InputError(VMCOREINFO, "expected 'ADDRESS SIZE' (\"%pa %x\")", 1)
    try:
        address = int(fields[0], 16)
        size = int(fields[1], 16)
    except ValueError:
        raise InputError(VMCOREINFO, "expected hexadecimal 'ADDRESS SIZE'", 1) from None
    if address < 0 or size <= 0:
        raise InputError(VMCOREINFO, "address or size out of range", 1)
    return VmcoreInfo(address, size)


def _block_size(root: Sysroot) -> int | None:
    path = f"{MEMORY_DIR}/block_size_bytes"
    text = root.read(path)
    if text is None:
        return None
    size = parse_hex(text, path, "a hexadecimal block size")
    if size == 0:
        raise InputError(path, "block size is 0", 1)
    return size
