"""The topology snapshot: everything about the running machine that a crash image
describes, as plain frozen values.

A :class:`Topology` is produced by :mod:`kdumpd.system.topologyreader` from a sysroot and
consumed by the image builders.  Address ranges follow ``/proc/iomem`` and the
kernel's ``struct resource``: ``end`` is **inclusive**.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


def format_cpulist(cpus: Iterable[int]) -> str:
    """``{0, 1, 2, 3, 8}`` → ``"0-3,8"``: the kernel's cpulist notation (as in
    ``/sys/devices/system/cpu/present``); ``""`` for no CPUs."""
    out: list[str] = []
    ordered = sorted(set(cpus))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


@dataclass(frozen=True, slots=True, order=True)
class MemRange:
    """A physical address range ``[start, end]`` (inclusive end, as in /proc/iomem)."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def overlaps(self, other: MemRange) -> bool:
        return self.start <= other.end and other.start <= self.end

    def contains(self, addr: int) -> bool:
        return self.start <= addr <= self.end


@dataclass(frozen=True, slots=True)
class Resource:
    """One line of ``/proc/iomem``: a named range and its nesting depth (0 = top level)."""

    start: int
    end: int
    name: str
    depth: int = 0

    @property
    def range(self) -> MemRange:
        return MemRange(self.start, self.end)

    @property
    def is_system_ram(self) -> bool:
        # "System RAM", "System RAM (virtio_mem)", "System RAM (kmem)", ...
        return "System RAM" in self.name


def system_ram(iomem: Iterable[Resource]) -> tuple[MemRange, ...]:
    """Every ``System RAM*`` resource of ``iomem``, nested or not, ascending."""
    return tuple(sorted(r.range for r in iomem if r.is_system_ram))


@dataclass(frozen=True, slots=True)
class CrashNote:
    """``/sys/devices/system/cpu/cpuN/crash_notes`` (+ ``crash_notes_size``).

    The per-CPU note buffer is allocated at boot for every possible CPU, so its
    physical address never changes while the kernel runs.
    """

    cpu: int
    address: int
    size: int


@dataclass(frozen=True, slots=True)
class VmcoreInfo:
    """``/sys/kernel/vmcoreinfo``: physical address and size of the vmcoreinfo note."""

    address: int
    size: int


@dataclass(frozen=True, slots=True)
class KernelText:
    """Virtual placement of the kernel text, as kexec-tools derives it.

    ``vaddr``/``size`` describe the kernel-text PT_LOAD; ``source`` says where the
    numbers came from (``"kcore"``, ``"kcore-range"``, ``"kallsyms"`` or
    ``"kallsyms-estimate"``, see :mod:`kdumpd.system.kernelfacts`) so a reader can
    judge them.
    """

    vaddr: int
    size: int
    source: str


@dataclass(frozen=True, slots=True)
class MemoryBlock:
    """``/sys/devices/system/memory/memoryN``: one hotplug unit of ``block_size`` bytes."""

    index: int
    state: str | None  # "online", "offline", "going-offline", ... or None if unreadable
    online: bool | None

    def range(self, block_size: int) -> MemRange:
        return MemRange(self.index * block_size, (self.index + 1) * block_size - 1)


@dataclass(frozen=True, slots=True)
class DtNode:
    """One flattened-device-tree node below ``/cpus``, as the running kernel exposes it
    in ``/sys/firmware/devicetree/base/cpus/<name>/`` (ppc64; one file per property,
    raw big-endian bytes, one sub-directory per child node).

    ``name`` is the node name with its unit address (``"PowerPC,POWER9@8"``);
    ``properties`` are ``(name, value)`` pairs sorted by name, exactly the bytes of the
    property files.  On ppc64 a ``cpu`` node describes one core; its threads are the
    cells of ``ibm,ppc-interrupt-server#s``.
    """

    name: str
    properties: tuple[tuple[str, bytes], ...]
    children: tuple[DtNode, ...] = ()

    def prop(self, name: str) -> bytes | None:
        for key, value in self.properties:
            if key == name:
                return value
        return None

    @property
    def device_type(self) -> str | None:
        value = self.prop("device_type")
        if value is None:
            return None
        return value.split(b"\0", 1)[0].decode("ascii", "replace")

    @property
    def is_cpu(self) -> bool:
        return self.device_type == "cpu"

    @property
    def reg(self) -> int | None:
        """The first 32-bit cell of ``reg`` (the core's first hardware thread id)."""
        value = self.prop("reg")
        if value is None or len(value) < 4:
            return None
        return int.from_bytes(value[:4], "big")

    @property
    def interrupt_servers(self) -> tuple[int, ...]:
        """``ibm,ppc-interrupt-server#s``: the hardware thread ids of this core."""
        value = self.prop("ibm,ppc-interrupt-server#s") or b""
        return tuple(int.from_bytes(value[i : i + 4], "big") for i in range(0, len(value) - 3, 4))


@dataclass(frozen=True, slots=True)
class KernelCapabilities:
    """What the running kernel can do for us.  ``None`` means the file is absent.

    ``cpu_crash_hotplug``/``memory_crash_hotplug`` exist only with
    CONFIG_CRASH_HOTPLUG; they read 1 when the *loaded* crash image is
    hotplug-capable, and also read 0 while the kexec lock is contended.
    """

    release: str | None = None
    cpu_crash_hotplug: bool | None = None
    memory_crash_hotplug: bool | None = None
    crash_elfcorehdr_size: int | None = None
    kexec_crash_loaded: bool | None = None
    kexec_crash_size: int | None = None
    lockdown: str | None = None  # active mode: "none", "integrity", "confidentiality"

    @property
    def crash_hotplug_config(self) -> bool:
        """The kernel was built with CONFIG_CRASH_HOTPLUG (its sysfs files exist)."""
        return (
            self.cpu_crash_hotplug is not None
            or self.memory_crash_hotplug is not None
            or self.crash_elfcorehdr_size is not None
        )


@dataclass(frozen=True, slots=True)
class Topology:
    """A consistent snapshot of CPUs, memory and kernel facts read from one sysroot."""

    arch: str
    possible_cpus: tuple[int, ...]
    present_cpus: tuple[int, ...]
    online_cpus: tuple[int, ...]
    crash_notes: tuple[CrashNote, ...]  # ascending CPU number; only CPUs with the file
    iomem: tuple[Resource, ...]  # every /proc/iomem line, file order
    vmcoreinfo: VmcoreInfo | None = None
    kernel_text: KernelText | None = None
    page_offset: int | None = None
    memory_block_size: int | None = None
    memory_blocks: tuple[MemoryBlock, ...] = ()
    capabilities: KernelCapabilities = field(default_factory=KernelCapabilities)
    #: Children of the device tree's ``/cpus`` node (ppc64; empty where the sysroot has
    #: no ``/sys/firmware/devicetree/base/cpus``), sorted by node name.
    dt_cpus: tuple[DtNode, ...] = ()

    @property
    def system_ram(self) -> tuple[MemRange, ...]:
        """Every ``System RAM*`` resource, nested or not, ascending by address."""
        return system_ram(self.iomem)

    @property
    def crashkernel(self) -> tuple[MemRange, ...]:
        """Every ``Crash kernel`` reservation (normal and ,low), ascending."""
        return tuple(sorted(r.range for r in self.iomem if r.name == "Crash kernel"))

    @property
    def kernel_code(self) -> MemRange | None:
        for r in self.iomem:
            if r.name == "Kernel code":
                return r.range
        return None

    def image_key(self) -> tuple[object, ...]:
        """The parts of the snapshot that a crash image depends on.

        Two snapshots with equal keys produce byte-identical headers; the daemon
        compares keys to decide whether a regeneration is needed at all.
        """
        present = set(self.present_cpus)
        key: tuple[object, ...] = (
            tuple(n for n in self.crash_notes if n.cpu in present),
            self.system_ram,
            self.crashkernel,
            self.kernel_code,
            self.vmcoreinfo,
            self.kernel_text,
            self.page_offset,
        )
        if self.dt_cpus:  # ppc64: the crash FDT's /cpus node depends on them
            key += (self.dt_cpus,)
        return key
