"""The backend interface: how a regenerated crash image reaches the kernel.

The reconciler owns policy (when to apply, retries, degraded state); a backend does
one attempt per call and raises :class:`~kdumpd.system.kexec.KexecError` with the
errno on a syscall fault.  A request carries the whole :class:`CrashImage`
(every segment, not only the elfcorehdr), so the segment-level ``kexec_load`` +
purgatory-digest backend slots in as one more class: it will load
``request.image.segments`` and re-digest them, where ``file`` hands the kernel
files and lets it build its own elfcorehdr, and ``kernel`` lets the kernel
rewrite the loaded one in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kdumpd.core.image import CrashImage
    from kdumpd.core.topology import Topology


@dataclass(frozen=True, slots=True)
class LoadRequest:
    image: CrashImage
    topology: Topology
    generation: int
    trigger: str
    counters: Mapping[str, int] = field(default_factory=dict)
    force_load: bool = False  # a full load even where an in-place update would do


@dataclass(frozen=True, slots=True)
class ApplyResult:
    loaded: bool  # a load syscall (or its dry-run stand-in) happened
    gap_usec: int  # how long no crash image was loaded (0 for in-kernel updates)
    kernel_updates_in_place: bool  # the kernel rewrites the elfcorehdr on hotplug
    detail: str = ""


class Backend(Protocol):
    @property
    def name(self) -> str: ...

    def is_loaded(self) -> bool:
        """A crash image is loaded right now (``/sys/kernel/kexec_crash_loaded``)."""
        ...

    async def apply(self, request: LoadRequest) -> ApplyResult:
        """Make ``request.image`` (or the kernel's equivalent) the loaded crash image.
        Must never unload first; raises KexecError on a syscall fault."""
        ...

    async def restore(self, request: LoadRequest) -> ApplyResult:
        """Load the last image/inputs that loaded successfully (after a hard fault)."""
        ...

    async def unload(self) -> None: ...
