"""Fakes for the daemon tests: a mutable topology, scripted syscalls, a recording backend."""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdumpd.core.topology import Resource, Topology
from kdumpd.daemon.backends.base import ApplyResult, LoadRequest, LoadSyscall
from kdumpd.daemon.reconciler import Reconciler
from kdumpd.daemon.state import StateStore
from kdumpd.system.kexec import KexecError
from kdumpd.system.topologyreader import read_topology

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "guest-6.1-before"
BLOCK = 128 << 20
HOTPLUG_BASE = 0x1000000000  # 64 GiB, above everything in the fixture's RAM


def base_topology() -> Topology:
    return read_topology(FIXTURE)


class TopologyHolder:
    """``read_topology`` stand-in: returns ``current``; ``add_blocks(n)`` grows RAM."""

    def __init__(self, topology: Topology | None = None) -> None:
        self.base = topology or base_topology()
        self.current = self.base
        self.blocks = 0
        self.reads = 0

    def __call__(self, sysroot: Path) -> Topology:
        self.reads += 1
        return self.current

    def set_blocks(self, n: int) -> None:
        self.blocks = n
        if n == 0:
            self.current = self.base
            return
        extra = Resource(HOTPLUG_BASE, HOTPLUG_BASE + n * BLOCK - 1, "System RAM", 0)
        self.current = dataclasses.replace(self.current, iomem=(*self.base.iomem, extra))

    def add_blocks(self, n: int = 1) -> None:
        self.set_blocks(self.blocks + n)

    @property
    def ram_end(self) -> int:
        return HOTPLUG_BASE + self.blocks * BLOCK - 1


class RecordingBackend:
    """A backend that records requests; ``on_apply`` can mutate the world mid-load and
    ``faults`` (errno list) makes the next applies fail."""

    def __init__(
        self, name: str = "fake", *, consumes_image: bool = True, load_syscall: str = ""
    ) -> None:
        self._name = name
        self.consumes_image = consumes_image
        self.load_syscall = LoadSyscall(load_syscall)
        self.adopted = 0
        self.inputs: dict[str, str] = {"kernel": "k1", "cmdline": "c1"}
        self.applied: list[LoadRequest] = []
        self.applied_ends: list[int] = []
        self.restored = 0
        self.unloaded = 0
        self.loaded = False
        self.faults: list[int] = []
        self.restore_faults: list[int] = []
        self.on_apply: Callable[[LoadRequest], None] | None = None

    @property
    def name(self) -> str:
        return self._name

    def is_loaded(self) -> bool:
        return self.loaded

    def adopt(self) -> bool:
        self.adopted += 1
        return True

    def input_digests(self) -> dict[str, str]:
        return dict(self.inputs)

    async def apply(self, request: LoadRequest) -> ApplyResult:
        if self.faults:
            err = self.faults.pop(0)
            if err in (errno.ENOMEM, errno.EINVAL, errno.ENOEXEC, errno.EKEYREJECTED):
                self.loaded = False  # the kernel freed the old image first
            raise KexecError("fake_load", err)
        self.applied.append(request)
        layout = request.image.layout if request.image is not None else None
        assert layout is not None or not self.consumes_image
        if layout is not None:
            self.applied_ends.append(max(r.end for r in layout.ranges))
        self.loaded = True
        if self.on_apply is not None:
            self.on_apply(request)
        return ApplyResult(True, 5, False, "fake")

    async def restore(self, request: LoadRequest) -> ApplyResult:
        if self.restore_faults:
            raise KexecError("fake_restore", self.restore_faults.pop(0))
        self.restored += 1
        self.loaded = True
        return ApplyResult(True, 5, False, "restored")

    async def unload(self) -> None:
        self.unloaded += 1
        self.loaded = False


class ScriptedKexec:
    """A KexecSyscalls whose next calls fail with the scripted errnos, then succeed."""

    def __init__(self, errnos: list[int] | None = None) -> None:
        self.errnos = list(errnos or [])
        self.calls: list[tuple[bytes, int]] = []
        # kexec_load: (entry, [(bytes copied, mem, memsz)], flags)
        self.loads: list[tuple[int, list[tuple[bytes, int, int]], int]] = []

    def file_load(self, kernel_fd: int, initrd_fd: int, cmdline: bytes, flags: int) -> None:
        self.calls.append((cmdline, flags))
        if self.errnos:
            raise KexecError("kexec_file_load", self.errnos.pop(0))

    def load(self, entry: int, segments: list[tuple[object, int, int]], flags: int) -> None:
        self.loads.append(
            (entry, [(bytes(b), m, z) for b, m, z in segments], flags)  # type: ignore[call-overload]
        )
        if self.errnos:
            raise KexecError("kexec_load", self.errnos.pop(0))


async def no_sleep(_: float) -> None:
    return None


class RecordingController:
    """The D-Bus service's controller: each method only records its name."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def reload(self) -> None:
        self.calls.append("reload")

    async def rescan(self) -> None:
        self.calls.append("rescan")

    async def load(self) -> None:
        self.calls.append("load")

    async def unload(self) -> None:
        self.calls.append("unload")

    async def report(self) -> dict[str, Any]:
        self.calls.append("report")
        return {}


def reconciler(sysroot: Path, backend: object, holder: TopologyHolder, **kw: object) -> Reconciler:
    """A reconciler over a fixture sysroot with short debounce windows, no real sleeps
    and no retry timer firing during a test."""
    return Reconciler(
        StateStore(),
        backend,  # type: ignore[arg-type]
        sysroot=sysroot,
        state_dir=sysroot / "run/kdumpd",
        read_topology=holder,
        quiet=0.002,
        max_staleness=0.01,
        sleep=no_sleep,
        retry_interval=3600,
        **kw,  # type: ignore[arg-type]
    )
