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

In-place mode (kernels with CONFIG_CRASH_HOTPLUG, 6.6+; docs/kernel-interfaces.md
§3, §10): every load also passes ``KEXEC_UPDATE_ELFCOREHDR``, the elfcorehdr is sized
for what the kernel may write there (:func:`kdumpd.arch.base.default_elfcorehdr_capacity`)
and the purgatory checks only its ELF shape, since the kernel rewrites it on every
CPU or memory event.  A burst then loads nothing, except when

- no image of ours with the flag is loaded (start, after a failed load, an unload),
  or ``kexec_crash_loaded`` reads 0, or ``crash_hotplug`` read 0 twice (a pause
  apart: one 0 may be its own failed trylock) right after our last load;
- the topology changed between building the header and the end of our own load
  (the kernel updated the old image or skipped its update:
  :class:`~kdumpd.daemon.backends.inplace.LoadRaceGuard` compares the header's own
  key with a read after the load, without a second load of the same, already stale
  header), the image is a restored one, or the kernel log said an update was skipped
  (the reconciler's ``force_load``);
- ``System RAM`` disappeared (:class:`~kdumpd.daemon.backends.inplace.RemovedRam`);
- the elfcorehdr segment is smaller than the kernel's own rebuild (a too-small
  ``[elfcorehdr]`` override): :func:`too_small_for_the_kernel`.

The kernel checks the flag bits before it frees the old image, so ``EINVAL`` for a
load with the flag leaves the old image loaded: the load is repeated once without the
flag (the elfcorehdr digested again) and, when that succeeds, the back-end stays in
reload-per-burst mode for the rest of its life.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdumpd.arch import purgatory_blob
from kdumpd.core.elfcorehdr import EHDR_SIZE, PHDR_SIZE
from kdumpd.core.errors import KdumpdError
from kdumpd.core.segment import LoaderInputs, SegmentImage, page_align
from kdumpd.daemon.backends.base import (
    ApplyResult,
    BackendName,
    LoadRequest,
    LoadSyscall,
    kexec_executor,
)
from kdumpd.daemon.backends.file import KexecFiles
from kdumpd.daemon.backends.inplace import (
    HOTPLUG_REREAD_DELAY,
    InPlaceLoader,
    LoadRaceGuard,
    RemovedRam,
    read_hotplug_after_load,
)
from kdumpd.daemon.statefile import key_digest
from kdumpd.system.kexec import (
    KEXEC_ON_CRASH,
    KEXEC_UPDATE_ELFCOREHDR,
    FileIdentity,
    KexecError,
    KexecSyscalls,
    MappedFile,
    file_identity,
)
from kdumpd.system.kexecsysfs import crash_hotplug_file, read_crash_hotplug
from kdumpd.system.sysroot import Sysroot

if TYPE_CHECKING:
    from kdumpd.core.image import CrashImage
    from kdumpd.core.segment import ImageBuilder
    from kdumpd.core.topology import Topology

log = logging.getLogger("kdumpd.daemon.backends.segment")


#: arch/x86/kernel/ksysfs.c: the running kernel's boot_params, read-only for root.
BOOT_PARAMS_DATA = "/sys/kernel/boot_params/data"


#: drivers/firmware/efi/efi.c ``systab_show()``: ``ACPI20=0x...`` / ``ACPI=0x...`` lines,
#: the RSDP addresses from the EFI configuration table (root only).
EFI_SYSTAB = "/sys/firmware/efi/systab"
#: arch/x86/include/uapi/asm/bootparam.h: ``acpi_rsdp_addr`` in boot_params.
ACPI_RSDP_ADDR = 0x070


def read_efi_rsdp(sysroot: Path) -> int:
    """The ACPI RSDP address an EFI machine's firmware published (``ACPI20=`` before
    ``ACPI=``), 0 when there is none or it cannot be read."""
    try:
        text = Sysroot(sysroot).read_value(EFI_SYSTAB) or ""
    except (KdumpdError, OSError):
        return 0
    found = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    for key in ("ACPI20", "ACPI"):
        value = found.get(key, "").strip()
        if value.startswith("0x") and 2 < len(value) <= 18:
            try:
                return int(value, 16)
            except ValueError:
                continue
    return 0


#: arch/x86/include/uapi/asm/bootparam.h: the zero page.
BOOT_PARAMS_SIZE = 4096
_unreadable_warned: set[Path] = set()  # sysroots whose boot_params could not be read


def read_running_boot_params(sysroot: Path) -> bytes:
    """``/sys/kernel/boot_params/data`` (x86), of which the loader takes only
    ``acpi_rsdp_addr``.

    A kernel started by firmware through its EFI stub can leave ``acpi_rsdp_addr``
    0 there (seen on Debian 6.1 under OVMF: docs/e2e.md); then the capture kernel,
    which gets no EFI state from kdumpd (``efi_info`` is zeroed), would find no ACPI
    at all on firmware without the legacy BIOS area.  The RSDP the firmware lists in
    ``/sys/firmware/efi/systab`` is filled in instead; the same when boot_params
    cannot be read at all (a warning, once per sysroot: a zero page then carries
    only that address).  Empty when neither has one."""
    root = Sysroot(sysroot)
    try:
        data = root.read_bytes(BOOT_PARAMS_DATA, limit=8192)
        why = "missing" if data is None else ""
    except (KdumpdError, OSError) as err:
        data, why = None, str(err)
    data = data or b""
    field = slice(ACPI_RSDP_ADDR, ACPI_RSDP_ADDR + 8)
    readable = len(data) >= field.stop
    if readable and int.from_bytes(data[field], "little"):
        return data
    rsdp = read_efi_rsdp(sysroot)
    if not readable:
        if sysroot not in _unreadable_warned:
            _unreadable_warned.add(sysroot)
            log.warning(
                "cannot read %s (%s): the capture kernel gets %s",
                BOOT_PARAMS_DATA,
                why or f"{len(data)} bytes",
                f"the ACPI RSDP {rsdp:#x} from {EFI_SYSTAB}"
                if rsdp
                else f"no ACPI RSDP (none in {EFI_SYSTAB} either); it must find ACPI itself",
            )
        if not rsdp:
            return b""
        data = bytes(BOOT_PARAMS_SIZE)
    else:
        if not rsdp:
            return data
        log.info(
            "acpi_rsdp_addr is 0 in boot_params; the capture kernel gets %#x (EFI systab)", rsdp
        )
    patched = bytearray(data)
    patched[field] = rsdp.to_bytes(8, "little")
    return bytes(patched)


def too_small_for_the_kernel(memsz: int, topology: Topology) -> str:
    """Why the kernel cannot rewrite an elfcorehdr segment of ``memsz`` bytes in place,
    or "".  Its rebuild (docs/kernel-interfaces.md §12) holds a note for every possible
    CPU, vmcoreinfo, kernel text and every System RAM range outside the crash
    reservations (each may split one range: +2), page-aligned; a larger header is not
    written at all (an error in the kernel log only).  Only a too-small
    ``[elfcorehdr]`` override gets here: the default capacity always fits."""
    ranges = len(topology.system_ram) + 2
    need = page_align(EHDR_SIZE + (len(topology.possible_cpus) + 2 + ranges) * PHDR_SIZE)
    if memsz >= need:
        return ""
    return (
        f"the elfcorehdr segment ({memsz} bytes) is smaller than the kernel's own rebuild "
        f"({need} bytes; raise [elfcorehdr] max_cpus/max_ranges), so the kernel cannot "
        "update it in place"
    )


def _inode(path: str) -> tuple[object, ...]:
    """Device and inode the path names now (empty when it names nothing)."""
    identity = file_identity(path)
    return identity[:2] if identity is not None else ()


class ChangedDuringLoad(KdumpdError):
    """A mapped kernel or initrd was rewritten or truncated while ``kexec_load`` copied
    it (the load succeeded, but with other bytes than the purgatory's digests)."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__(
            f"{', '.join(paths)} changed in place during the kexec_load (the kernel may "
            "hold other bytes than the digests describe)"
        )


@dataclass(slots=True)
class Prepared:
    key: tuple[object, ...]
    image: SegmentImage
    maps: tuple[MappedFile, ...]

    def close(self) -> None:
        for m in self.maps:
            m.close()


class SegmentBackend(InPlaceLoader):
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
        in_place: bool | None = None,
        read_hotplug: Callable[[Path], bool | None] = read_crash_hotplug,
        hotplug_reread_delay: float = HOTPLUG_REREAD_DELAY,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.syscalls = syscalls
        self.files = files
        self.sysroot = Path(sysroot)
        self.builder = builder
        self.purgatory = purgatory
        # sha256 of the purgatory blob the last prepared image was built with
        self.purgatory_sha256 = hashlib.sha256(purgatory).hexdigest() if purgatory else ""
        self.prepared: Prepared | None = None
        self.last_good: Prepared | None = None
        self.prepare_usec = 0
        # Load with KEXEC_UPDATE_ELFCOREHDR and let the kernel keep the header current:
        # the kernel has CONFIG_CRASH_HOTPLUG and has not refused the flag.
        self.in_place = (
            crash_hotplug_file(self.sysroot) is not None if in_place is None else in_place
        )
        self.flag_refused = False  # EINVAL for the flag: reload-per-burst from then on
        self.own_load = False  # the loaded image is ours, loaded with the flag
        self.hotplug_flag: bool | None = None  # crash_hotplug as read after our last load
        self.read_hotplug = read_hotplug
        self.hotplug_reread_delay = hotplug_reread_delay
        self.sleep = sleep
        # why the kernel does not update our loaded image in place ("" = it does)
        self.not_updated = ""
        self.race = LoadRaceGuard(self.name)
        self.removed_ram = RemovedRam()

    @property
    def name(self) -> BackendName:
        return BackendName.SEGMENT

    @property
    def updated_in_place(self) -> bool:
        """The kernel keeps our image current (so it can also skip an update)."""
        return self.in_place

    def adopt(self) -> bool:
        return False  # the loaded image's segments cannot be read back: load our own

    def input_digests(self) -> dict[str, str]:
        return {
            **self.files.digests(),
            "purgatory": self.purgatory_sha256,
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
        blob = self.purgatory
        if not blob and self.builder is None:  # the architecture's built blob
            blob = purgatory_blob(topology.arch)
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
                kernel_file=kernel,
                initrd_file=initrd,
                cmdline=files.cmdline,
                purgatory=blob,
                boot_params=read_running_boot_params(self.sysroot)
                if topology.arch == "x86_64"
                else b"",
            )
            seg_image = self._builder(topology).build(inputs, topology, image.elfcorehdr)
        except BaseException:
            for m in maps:
                m.close()
            raise
        old, self.prepared = self.prepared, Prepared(key, seg_image, tuple(maps))
        self.purgatory_sha256 = hashlib.sha256(blob).hexdigest() if blob else ""
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
        flags = KEXEC_ON_CRASH | plan.arch_flag
        seg_image.set_in_place(self.in_place)
        t0 = time.monotonic_ns()
        if not self.in_place:
            self.syscalls.load(plan.entry, specs, flags)
            return (time.monotonic_ns() - t0) // 1000
        try:
            self.syscalls.load(plan.entry, specs, flags | KEXEC_UPDATE_ELFCOREHDR)
        except KexecError as err:
            if err.errno != errno.EINVAL:
                raise
            # The flag bits are checked before the old image is freed: if the flag was
            # the reason, the old image is still loaded.  Once more without it, with
            # the elfcorehdr digested like every other segment.
            seg_image.set_in_place(False)
            t0 = time.monotonic_ns()
            try:
                self.syscalls.load(plan.entry, specs, flags)
            except BaseException:
                seg_image.set_in_place(True)  # not the flag's fault: keep trying it
                raise
            self.in_place = False
            self.flag_refused = True
            log.warning(
                "the kernel refused KEXEC_UPDATE_ELFCOREHDR (EINVAL) and accepted the same "
                "segments without it: every burst reloads the crash image from now on"
            )
        return (time.monotonic_ns() - t0) // 1000

    async def _load(self, prepared: Prepared) -> int:
        """One ``kexec_load`` of ``prepared``.  The identity that matters is the one of
        the *mapped* inodes (what the kernel copies), not the paths: a file rewritten
        in place or truncated before the syscall refuses the load (nothing is sent);
        during it raises :class:`ChangedDuringLoad` (the kernel then holds other bytes
        than the digests describe).  A path that names another file now (a package
        update renames a new file over it) leaves the mapping and the loaded image
        intact: the next pass prepares the new file."""
        moved = [m.path for m in prepared.maps if m.changed()]
        if moved:
            if self.prepared is prepared:
                self.prepared = None
            raise KdumpdError(
                f"{', '.join(moved)} was rewritten in place after it was digested; "
                "not loading it (the next pass prepares it again)"
            )
        loop = asyncio.get_running_loop()
        self.own_load = False
        try:
            gap = await loop.run_in_executor(kexec_executor(), self._load_sync, prepared.image)
        finally:
            for m in prepared.maps:
                m.release_pages()
        self.own_load = self.in_place
        moved = [m.path for m in prepared.maps if m.changed()]
        if moved:
            if self.prepared is prepared:
                self.prepared = None
            self.own_load = False  # not an image whose in-place updates can be trusted
            raise ChangedDuringLoad(moved)
        renamed = [m.path for m in prepared.maps if _inode(m.path) != m.identity[:2]]
        if renamed:
            log.info(
                "%s now names another file; the loaded image holds the one it replaced, "
                "the next pass prepares the new one",
                ", ".join(renamed),
            )
        old, self.last_good = self.last_good, prepared
        if old is not None and old is not prepared and old is not self.prepared:
            old.close()
        return gap

    async def _guarded(self, prepared: Prepared, request: LoadRequest, detail: str) -> ApplyResult:
        """One load; with the flag, watched by the race guard (no second load of the
        same header: see the module docstring)."""

        async def once() -> ApplyResult:
            gap = await self._load(prepared)
            if self.in_place:
                # inside the guard: these reads take the kexec lock too, so an event
                # they make the kernel skip is seen by the guard's read after them
                await self._check_hotplug_flag()
            return ApplyResult(True, gap, self.in_place and not self.not_updated, detail)

        if not self.in_place:
            return await once()
        # "before" is the topology the header was built from, not a read now: an event
        # between the build and the syscall updates the old image, which the syscall
        # then replaces with a header lacking it (inplace.py's docstring)
        built = request.topology
        before = key_digest(built.image_key()) if built is not None else None
        return await self.race.load(once, request.read_key, retry=False, before=before)

    async def _check_hotplug_flag(self) -> None:
        """``crash_hotplug`` after our load with the flag (read twice when the first
        reads 0).  0 twice: stop trusting in-place updates for this image; every burst
        loads until a load reads 1 again."""
        flag = await read_hotplug_after_load(
            self.read_hotplug, self.sysroot, self.sleep, self.hotplug_reread_delay
        )
        self.hotplug_flag = flag
        self.not_updated = ""
        if flag is False:
            self.not_updated = (
                "crash_hotplug read 0 twice after kdumpd's kexec_load with "
                "KEXEC_UPDATE_ELFCOREHDR: the kernel may not update this image in place"
            )
            log.warning("%s; every burst loads the crash image until it reads 1", self.not_updated)

    def _reload_reason(self) -> str:
        """Why this burst must load although the kernel updates in place, or ""."""
        if not self.own_load:
            return "no crash image loaded by kdumpd with KEXEC_UPDATE_ELFCOREHDR"
        if self.not_updated:
            return self.not_updated
        if not self.is_loaded():
            return "kexec_crash_loaded reads 0"
        return self.race.suspect

    async def apply(self, request: LoadRequest) -> ApplyResult:
        if request.image is None or request.topology is None:
            raise KdumpdError("the segment back-end needs kdumpd's crash image model")
        removed = self.removed_ram.check(request.topology)
        if self.in_place and not request.force_load:
            why = (
                self._reload_reason()
                or removed
                or too_small_for_the_kernel(request.image.elfcorehdr.memsz, request.topology)
            )
            if not why:
                return ApplyResult(False, 0, True, "kernel updated the elfcorehdr in place")
            if self.own_load:
                log.warning("%s: loading the crash image with kexec_load", why)
        try:
            return await self._prepare_and_load(request)
        except ChangedDuringLoad as err:
            first = err
            log.warning("%s; preparing and loading once more", err)
        try:
            return await self._prepare_and_load(request)
        except ChangedDuringLoad as err:
            raise await self._untrusted(err) from None
        except Exception:
            # the once-more load failed some other way (the file vanished or is still
            # being written, EBUSY, ENOMEM...): the first attempt's image may still be
            # loaded, with digests of other bytes; never leave it claimed
            await self._untrusted(first)
            raise

    async def _prepare_and_load(self, request: LoadRequest) -> ApplyResult:
        assert request.image is not None and request.topology is not None
        # A new input set is hashed whole (kernel, initrd): from disk when the page
        # cache is cold.  Off the event loop (D-Bus, the watchdog keep answering), on
        # the one kexec thread, so it never overlaps a load.
        loop = asyncio.get_running_loop()
        seg_image = await loop.run_in_executor(
            kexec_executor(), self.prepare, request.image, request.topology
        )
        seg_image.refresh()
        assert self.prepared is not None
        hdr = request.image.elfcorehdr
        return await self._guarded(
            self.prepared,
            request,
            f"kexec_load {len(seg_image.plan.segments)} segments, elfcorehdr at {hdr.mem:#x}"
            + (" (KEXEC_UPDATE_ELFCOREHDR)" if self.in_place else ""),
        )

    async def _untrusted(self, err: ChangedDuringLoad) -> KdumpdError:
        """The loaded image's digests describe other bytes than the kernel copied: the
        purgatory would refuse it at a crash.  Unload it, so that nothing (state,
        ``kexec_crash_loaded``) says a crash kernel is ready when none can dump."""
        try:
            await self.unload()
        except KexecError as unload_err:
            log.error("unloading the untrustworthy crash image failed: %s", unload_err)
        return KdumpdError(f"{err}; unloaded it: no trustworthy crash image is loaded")

    async def restore(self, request: LoadRequest) -> ApplyResult:
        good = self.last_good
        if good is None:
            raise KdumpdError("no crash image has loaded successfully yet; nothing to restore")
        good.image.refresh()
        try:
            result = await self._guarded(
                good, request, "restored the last segment list that loaded"
            )
        except ChangedDuringLoad as err:
            raise await self._untrusted(err) from None
        if self.in_place and not self.race.suspect:
            # its elfcorehdr may be an earlier image's: without this the retry's burst
            # would trust the kernel's in-place updates on top of it
            self.race.suspect = (
                "the restored crash image's elfcorehdr may describe an earlier topology"
            )
        return result

    async def unload(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(kexec_executor(), self.syscalls.load, 0, [], KEXEC_ON_CRASH)
        self.own_load = False
