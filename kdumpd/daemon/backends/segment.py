"""``segment`` back-end: kdumpd's own crash image through one ``kexec_load(2)``.

kdumpd builds every segment itself (the architecture's
:class:`~kdumpd.core.segment.ImageBuilder`: kernel payload, initrd, boot parameters,
purgatory, around the core's preallocated elfcorehdr), checks the whole list in
Python (:func:`~kdumpd.core.segment.validate_segments`) and loads it with
``KEXEC_ON_CRASH | KEXEC_ARCH_<arch>``.  Never an unload first: the kernel swaps the
image inside the one syscall.

Prepared once per set of loader inputs (kernel, initrd, capture command line, the
elfcorehdr buffer's address and size): the kernel and initrd are mapped read-only
from their files (page cache, no anonymous copy), boot_params and the purgatory are
built and the kernel/initrd/boot_params digests computed.  A burst then only rewrites
the elfcorehdr in place (the reconciler's :class:`~kdumpd.core.image.CrashImage`),
rehashes that one region into the purgatory header and issues one ``kexec_load``
with the same segment list, on the same worker thread as ``file``.

``EPERM`` (lockdown, ``kexec_load_disabled``) and ``EACCES`` (IMA) make the
reconciler fall back to ``file`` (``load_syscall = "kexec_load"``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdumpd.core.errors import KdumpdError
from kdumpd.core.segment import LoaderInputs, SegmentImage
from kdumpd.daemon.backends.base import ApplyResult, BackendName, LoadRequest, LoadSyscall
from kdumpd.daemon.backends.file import KexecFiles, _executor
from kdumpd.system.kexec import (
    KEXEC_ON_CRASH,
    FileIdentity,
    KexecSyscalls,
    MappedFile,
    file_identity,
)
from kdumpd.system.kexecsysfs import crash_image_loaded
from kdumpd.system.sysroot import Sysroot

if TYPE_CHECKING:
    from kdumpd.core.image import CrashImage
    from kdumpd.core.segment import ImageBuilder
    from kdumpd.core.topology import Topology

log = logging.getLogger("kdumpd.daemon.backends.segment")


#: arch/x86/kernel/ksysfs.c: the running kernel's boot_params, read-only for root.
BOOT_PARAMS_DATA = "/sys/kernel/boot_params/data"


def read_running_boot_params(sysroot: Path) -> bytes:
    """``/sys/kernel/boot_params/data`` (x86; empty elsewhere or when unreadable)."""
    try:
        return Sysroot(sysroot).read_bytes(BOOT_PARAMS_DATA, limit=8192) or b""
    except (KdumpdError, OSError):
        return b""


@dataclass(slots=True)
class Prepared:
    key: tuple[object, ...]
    image: SegmentImage
    maps: tuple[MappedFile, ...]

    def close(self) -> None:
        for m in self.maps:
            m.close()


class SegmentBackend:
    consumes_image = True
    load_syscall = LoadSyscall.KEXEC_LOAD

    def __init__(
        self,
        syscalls: KexecSyscalls,
        files: KexecFiles,
        sysroot: str | Path = "/",
        *,
        builder: ImageBuilder | None = None,
        purgatory: bytes = b"",
    ) -> None:
        self.syscalls = syscalls
        self.files = files
        self.sysroot = Path(sysroot)
        self.builder = builder
        self.purgatory = purgatory
        self.prepared: Prepared | None = None
        self.last_good: Prepared | None = None
        self.prepare_usec = 0

    @property
    def name(self) -> BackendName:
        return BackendName.SEGMENT

    def is_loaded(self) -> bool:
        return crash_image_loaded(self.sysroot)

    def adopt(self) -> bool:
        return False  # the loaded image's segments cannot be read back: load our own

    def input_digests(self) -> dict[str, str]:
        return {
            **self.files.digests(),
            "purgatory": hashlib.sha256(self.purgatory).hexdigest() if self.purgatory else "",
        }

    def _builder(self, topology: Topology) -> ImageBuilder:
        if self.builder is not None:
            return self.builder
        from kdumpd.arch import get_arch

        builder = get_arch(topology.arch).image_builder()
        if builder is None:
            raise KdumpdError(
                f"the segment back-end has no image builder for {topology.arch}; "
                "use the file back-end"
            )
        return builder

    def _key(self, image: CrashImage) -> tuple[object, ...]:
        """What a prepared image depends on: the inputs, the elfcorehdr buffer and its
        address, and the identity of the kernel and initrd files."""
        seg = image.elfcorehdr
        files = self.files
        return (files.kernel, files.initrd, files.cmdline, id(seg.buf), seg.mem, *self._files())

    def _files(self) -> tuple[FileIdentity | None, ...]:
        return tuple(file_identity(p) for p in (self.files.kernel, self.files.initrd) if p)

    def prepare(self, image: CrashImage, topology: Topology) -> SegmentImage:
        """The segment image for ``image``'s elfcorehdr, built once per set of inputs
        (raises a one-line :class:`KdumpdError` before any syscall)."""
        if not image.placed:
            raise KdumpdError("no Crash kernel reservation: the crash image cannot be placed")
        key = self._key(image)
        if self.prepared is not None and self.prepared.key == key:
            return self.prepared.image
        t0 = time.monotonic_ns()
        files = self.files
        maps: list[MappedFile] = []
        try:
            kernel = MappedFile(files.kernel)
            maps.append(kernel)
            initrd = MappedFile(files.initrd) if files.initrd else None
            if initrd is not None:
                maps.append(initrd)
            inputs = LoaderInputs(
                kernel=kernel.view,
                kernel_name=files.kernel,
                initrd=initrd.view if initrd is not None else None,
                cmdline=files.cmdline,
                purgatory=self.purgatory,
                boot_params=read_running_boot_params(self.sysroot),
            )
            seg_image = self._builder(topology).build(inputs, topology, image.elfcorehdr)
        except BaseException:
            for m in maps:
                m.close()
            raise
        old, self.prepared = self.prepared, Prepared(key, seg_image, tuple(maps))
        if old is not None and old is not self.last_good:
            old.close()
        self.prepare_usec = (time.monotonic_ns() - t0) // 1000
        log.info(
            "prepared %d segments for %s in %.1f ms (entry %#x)",
            len(seg_image.plan.segments),
            files.kernel,
            self.prepare_usec / 1000,
            seg_image.plan.entry,
        )
        return seg_image

    def _load_sync(self, seg_image: SegmentImage) -> int:
        plan = seg_image.plan
        specs = [(s.buf, s.mem, s.memsz) for s in plan.segments]
        t0 = time.monotonic_ns()
        self.syscalls.load(plan.entry, specs, KEXEC_ON_CRASH | plan.arch_flag)
        return (time.monotonic_ns() - t0) // 1000

    async def _load(self, prepared: Prepared) -> int:
        loop = asyncio.get_running_loop()
        try:
            gap = await loop.run_in_executor(_executor(), self._load_sync, prepared.image)
        finally:
            for m in prepared.maps:
                m.release_pages()
        if prepared.key[5:] != self._files():
            # a file changed while it was being loaded: the kernel may hold a mix of
            # old and new bytes under the old digests; the next pass prepares anew
            self.prepared = None
            raise KdumpdError(
                f"{self.files.kernel} or its initrd changed during the load; loading "
                "again with the new files"
            )
        old, self.last_good = self.last_good, prepared
        if old is not None and old is not prepared and old is not self.prepared:
            old.close()
        return gap

    async def apply(self, request: LoadRequest) -> ApplyResult:
        if request.image is None or request.topology is None:
            raise KdumpdError("the segment back-end needs kdumpd's crash image model")
        seg_image = self.prepare(request.image, request.topology)
        seg_image.refresh()
        assert self.prepared is not None
        gap = await self._load(self.prepared)
        hdr = request.image.elfcorehdr
        return ApplyResult(
            True,
            gap,
            False,
            f"kexec_load {len(seg_image.plan.segments)} segments, elfcorehdr at {hdr.mem:#x}",
        )

    async def restore(self, request: LoadRequest) -> ApplyResult:
        good = self.last_good
        if good is None:
            raise KdumpdError("no crash image has loaded successfully yet; nothing to restore")
        good.image.refresh()
        gap = await self._load(good)
        return ApplyResult(True, gap, False, "restored the last segment list that loaded")

    async def unload(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(_executor(), lambda: self.syscalls.load(0, [], KEXEC_ON_CRASH))
