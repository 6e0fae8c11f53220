"""The backend interface: how a regenerated crash image reaches the kernel.

The reconciler owns policy (when to apply, retries, degraded state); a backend does
one attempt per call and raises :class:`~kdumpd.system.kexec.KexecError` with the
errno on a syscall fault.  A request carries the whole :class:`CrashImage`
(every segment, not only the elfcorehdr), so the segment-level ``kexec_load`` +
purgatory-digest backend slots in as one more class: it will load
``request.image.segments`` and re-digest them, where ``file`` hands the kernel
files and lets it build its own elfcorehdr, and ``kernel`` lets the kernel
rewrite the loaded one in place.

Two class attributes tell the reconciler what a backend needs and does:

- ``consumes_image``: the backend loads kdumpd's own :class:`CrashImage` (dry-run,
  a future ``kexec_load`` backend).  When False (``file``, ``kernel``: the kernel
  builds its own elfcorehdr inside ``kexec_file_load``), a failure to build
  kdumpd's model (an unsupported architecture, an unreadable ``/proc/iomem``
  layout, a placement that does not fit) must not stop the load: the request
  carries ``image=None`` and the missing model is reported as ``LastError`` and
  ``Stale``.
- ``load_syscall``: a :class:`LoadSyscall`.

Two optional attributes (read with ``getattr``, default False / ""), for back-ends
whose loaded image the kernel updates in place (``kernel``; ``kexec_load`` with
``KEXEC_UPDATE_ELFCOREHDR``): ``updated_in_place`` (a kernel-log line about a skipped
update then asks for a fresh load, kdumpd.daemon.skipped) and ``stale_reason`` (why
the loaded image may lack something: an update missed during the load, from
:class:`~kdumpd.daemon.backends.inplace.LoadRaceGuard`; RAM kexec-tools left out,
from :class:`~kdumpd.daemon.backends.kexectools.MemoryLimitClip`).  The reconciler
reads it after every apply, also one without a load (an in-place update may end a
reason), and after adopting a loaded image.
  The EPERM policy falls back from ``kexec_load`` (unsigned segments under
  lockdown) to ``kexec_file_load`` and never from ``kexec_file_load`` to itself.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from kdumpd.core.errors import KdumpdError

if TYPE_CHECKING:
    from kdumpd.core.image import CrashImage
    from kdumpd.core.topology import Topology


class LoadRefused(KdumpdError):
    """A back-end refused a load before any syscall (the loaded image stays)."""


class NothingToRestore(KdumpdError):
    """A restore was asked for before any image loaded successfully."""

    def __init__(self) -> None:
        super().__init__("no crash image has loaded successfully yet; nothing to restore")


class BackendName(enum.StrEnum):
    """The loaders kdumpd can use (``backend =`` in the configuration, besides ``auto``)."""

    KERNEL = "kernel"
    FILE = "file"
    SEGMENT = "segment"
    KEXEC_TOOLS = "kexec-tools"
    DRY_RUN = "dry-run"


class LoadSyscall(enum.StrEnum):
    """The syscall a back-end loads with (the EPERM policy depends on it)."""

    KEXEC_FILE_LOAD = "kexec_file_load"
    KEXEC_LOAD = "kexec_load"
    NONE = ""  # no syscall (dry-run)


class Trigger(enum.StrEnum):
    """Why a pass runs.  A burst of events is named by its own text
    (``"12 events (quiet)"``), so a request's trigger is ``Trigger | str``."""

    START = "start"
    ADOPT = "adopt"  # start, adopting the image state.json records
    # start, adopting it, but CPUs or memory changed while no daemon ran: this loads
    ADOPT_CHANGED = "adopt: topology changed"
    RELOAD = "reload"
    LOAD = "load"
    RESCAN = "rescan"
    RETRY = "retry"
    RECHECK = "recheck"  # the re-read right after an apply
    KERNEL_LOG = "kernel log"
    REQUEST = "request"  # a request without a name


@dataclass(frozen=True, slots=True)
class LoadRequest:
    image: CrashImage | None  # None: no model could be built (backends not consuming it)
    topology: Topology | None  # None: the topology could not be read (likewise)
    generation: int
    trigger: Trigger | str
    counters: Mapping[str, int] = field(default_factory=dict)
    force_load: bool = False  # a full load even where an in-place update would do
    # Re-reads the topology and returns its image-key digest (None: unreadable).  A
    # back-end whose image the kernel updates in place compares it around its load
    # syscall (kdumpd.daemon.backends.inplace); None: no such check.
    read_key: Callable[[], str | None] | None = None


@dataclass(frozen=True, slots=True)
class ApplyResult:
    loaded: bool  # a load syscall (or its dry-run stand-in) happened
    gap_usec: int  # how long no crash image was loaded (0 for in-kernel updates)
    kernel_updates_in_place: bool  # the kernel rewrites the elfcorehdr on hotplug
    detail: str = ""
    loads: int | None = None  # load syscalls made (None: one if ``loaded``, else none)

    @property
    def load_count(self) -> int:
        if self.loads is not None:
            return self.loads
        return 1 if self.loaded else 0


class Backend(Protocol):
    consumes_image: bool
    load_syscall: LoadSyscall

    @property
    def name(self) -> str: ...

    def is_loaded(self) -> bool:
        """A crash image is loaded right now (``/sys/kernel/kexec_crash_loaded``)."""
        ...

    def adopt(self) -> bool:
        """The loaded crash image is the one state.json says this daemon loaded: take it
        over.  False when the backend cannot confirm it (the reconciler loads afresh)."""
        ...

    def input_digests(self) -> dict[str, str]:
        """Digests of the configured loader inputs (e.g. kernel, initrd, cmdline), so a
        restart after a change reloads instead of adopting; {} when there are none."""
        ...

    async def apply(self, request: LoadRequest) -> ApplyResult:
        """Make ``request.image`` (or the kernel's equivalent) the loaded crash image.
        Must never unload first; raises KexecError on a syscall fault and another
        KdumpdError when it refused before any syscall (the old image stays)."""
        ...

    async def restore(self, request: LoadRequest) -> ApplyResult:
        """Load the last image/inputs that loaded successfully (after a hard fault)."""
        ...

    async def unload(self) -> None: ...


_EXECUTORS: list[ThreadPoolExecutor] = []


def kexec_executor() -> ThreadPoolExecutor:
    """One worker thread for every kexec syscall of the process, whichever back-end
    makes it (``loop.run_in_executor``): the syscalls never run concurrently."""
    if not _EXECUTORS:
        _EXECUTORS.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdumpd-kexec"))
    return _EXECUTORS[0]
