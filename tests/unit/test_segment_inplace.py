"""The ``segment`` back-end on kernels that update crash images in place (6.6+):
loads carry KEXEC_UPDATE_ELFCOREHDR, the purgatory only checks the elfcorehdr's ELF
shape, bursts load nothing except after a System RAM removal or a load that raced a
hotplug event, and EINVAL for the flag falls back to a load without it."""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kdumpd.arch.x86_64.loader import KEXEC_ARCH_X86_64, REGION_ELFCOREHDR, X86ImageBuilder
from kdumpd.arch.x86_64.purgatory import RegionFlag
from kdumpd.core.image import CrashImage
from kdumpd.core.segment import SegmentImage
from kdumpd.core.topology import Topology
from kdumpd.daemon.backends.base import LoadRequest
from kdumpd.daemon.backends.file import default_files
from kdumpd.daemon.backends.segment import SegmentBackend
from kdumpd.daemon.reconciler import default_image_factory
from kdumpd.daemon.state import ImageState
from kdumpd.daemon.statefile import key_digest
from kdumpd.system.kexec import KEXEC_ON_CRASH, KEXEC_UPDATE_ELFCOREHDR, KexecError
from tests.unit.bzimage_support import bootable_sysroot
from tests.unit.daemon_fakes import ScriptedKexec, TopologyHolder, reconciler
from tests.unit.purgatory_fake import FakePurgatory, fake_blob

FLAGS = KEXEC_ON_CRASH | KEXEC_ARCH_X86_64


@pytest.fixture
def sysroot(tmp_path: Path) -> Path:
    root = bootable_sysroot(tmp_path)
    (root / "sys/kernel/kexec_crash_loaded").write_text("1\n")  # our fake loads "succeed"
    return root


def backend(
    sysroot: Path,
    kexec: ScriptedKexec,
    *,
    in_place: bool = True,
    read_hotplug: Callable[[Path], bool | None] = lambda _root: True,
    **kw: Any,
) -> SegmentBackend:
    return SegmentBackend(
        kexec,
        default_files(sysroot),
        sysroot,
        builder=X86ImageBuilder(FakePurgatory),
        purgatory=fake_blob(),
        in_place=in_place,
        read_hotplug=read_hotplug,
        **kw,
    )


def region0(b: SegmentBackend) -> tuple[int, int, bytes, int]:
    assert b.prepared is not None
    pur = b.prepared.image.purgatory  # type: ignore[attr-defined]
    return pur.region(REGION_ELFCOREHDR)  # type: ignore[no-any-return]


def test_in_place_mode_follows_the_kernels_crash_hotplug_files(sysroot: Path) -> None:
    kexec = ScriptedKexec()
    files = default_files(sysroot)
    assert not SegmentBackend(kexec, files, sysroot).in_place  # 6.1: no such files
    (sysroot / "sys/kernel/crash_elfcorehdr_size").write_text("917616\n")
    b = SegmentBackend(kexec, files, sysroot)
    assert b.in_place and b.updated_in_place


async def test_loads_with_the_flag_then_hotplug_loads_nothing(sysroot: Path) -> None:
    kexec = ScriptedKexec()
    b = backend(sysroot, kexec)
    holder = TopologyHolder()
    r = reconciler(sysroot, b, holder)
    await r.start()
    assert len(kexec.loads) == 1
    assert kexec.loads[0][2] == FLAGS | KEXEC_UPDATE_ELFCOREHDR
    # the purgatory checks the header's shape only, never a digest of it
    start, length, _, flags = region0(b)
    hdr = b.prepared.image.plan.segments[0] if b.prepared else None
    assert hdr is not None and (start, length) == (hdr.mem, hdr.memsz)  # the whole segment
    assert flags == RegionFlag.ELF_STRUCTURAL
    s = r.store.current
    assert s.state == ImageState.LOADED and s.kernel_hotplug_support
    holder.add_blocks(2)
    r.request("hot-add")
    await r.settle()
    assert len(kexec.loads) == 1  # the kernel rewrote its copy: no load
    assert r.store.current.generation == 2 and not r.store.current.stale
    await r.stop()


async def test_a_removed_ram_range_loads_once(sysroot: Path) -> None:
    kexec = ScriptedKexec()
    b = backend(sysroot, kexec)
    holder = TopologyHolder()
    holder.add_blocks(2)
    r = reconciler(sysroot, b, holder)
    await r.start()
    holder.set_blocks(1)  # offlined and removed: the kernel's header still lists it
    r.request("hot-remove")
    await r.settle()
    assert len(kexec.loads) == 2
    assert kexec.loads[1][2] == FLAGS | KEXEC_UPDATE_ELFCOREHDR
    holder.add_blocks(1)
    r.request("hot-add")
    await r.settle()
    assert len(kexec.loads) == 2
    await r.stop()


async def test_einval_for_the_flag_loads_again_without_it_and_remembers(sysroot: Path) -> None:
    kexec = ScriptedKexec([errno.EINVAL])
    b = backend(sysroot, kexec)
    holder = TopologyHolder()
    r = reconciler(sysroot, b, holder)
    await r.start()
    assert [f for _, _, f in kexec.loads] == [FLAGS | KEXEC_UPDATE_ELFCOREHDR, FLAGS]
    assert r.store.current.state == ImageState.LOADED
    assert b.flag_refused and not b.in_place and not b.updated_in_place
    _, _, digest, flags = region0(b)
    hdr = kexec.loads[1][1][0][0]
    assert flags == 0 and digest == hashlib.sha256(hdr).digest()  # digested again
    assert not r.store.current.kernel_hotplug_support
    holder.add_blocks(1)
    r.request("hot-add")
    await r.settle()
    assert [f for _, _, f in kexec.loads][2:] == [FLAGS]  # reload per burst, no flag
    await r.stop()


async def test_einval_twice_is_not_the_flags_fault(sysroot: Path) -> None:
    kexec = ScriptedKexec([errno.EINVAL, errno.EINVAL])
    b = backend(sysroot, kexec)
    topology = TopologyHolder()(sysroot)
    image = default_image_factory()(topology)
    with pytest.raises(KexecError):
        await b.apply(LoadRequest(image, topology, 1, "test"))
    assert len(kexec.loads) == 2 and b.in_place and not b.flag_refused
    assert region0(b)[3] == RegionFlag.ELF_STRUCTURAL
    await b.apply(LoadRequest(image, topology, 1, "test"))
    assert kexec.loads[-1][2] == FLAGS | KEXEC_UPDATE_ELFCOREHDR


async def test_a_load_that_raced_hotplug_is_suspect_and_the_next_pass_loads(
    sysroot: Path,
) -> None:
    kexec = ScriptedKexec()
    b = backend(sysroot, kexec)
    topology = TopologyHolder()(sysroot)
    image = default_image_factory()(topology)
    keys = iter(["before", "after"])
    result = await b.apply(LoadRequest(image, topology, 1, "start", read_key=lambda: next(keys)))
    # the header was built before the syscall: loading it again would not help
    assert len(kexec.loads) == 1 and result.load_count == 1
    assert b.stale_reason and b.race.suspect
    result = await b.apply(LoadRequest(image, topology, 2, "recheck"))
    assert len(kexec.loads) == 2 and result.loaded and not b.stale_reason
    result = await b.apply(LoadRequest(image, topology, 3, "burst"))
    assert len(kexec.loads) == 2 and not result.loaded


async def test_the_race_check_starts_from_the_topology_the_header_was_built_from(
    sysroot: Path,
) -> None:
    """A hotplug event between building the header and the syscall updates the *old*
    image in place; the syscall then installs a header without it.  Two reads after the
    event agree, so only the header's own key shows the change."""
    kexec = ScriptedKexec()
    b = backend(sysroot, kexec)
    topology = TopologyHolder()(sysroot)
    image = default_image_factory()(topology)
    moved = key_digest(TopologyHolder().current.image_key()) + "-moved"
    result = await b.apply(LoadRequest(image, topology, 1, "start", read_key=lambda: moved))
    assert len(kexec.loads) == 1 and result.load_count == 1  # no second load of the same bytes
    assert b.stale_reason
    result = await b.apply(LoadRequest(image, topology, 2, "burst"))
    assert len(kexec.loads) == 2 and result.loaded and not b.stale_reason
    # a read that matches the header loaded: nothing is suspect
    same = key_digest(topology.image_key())
    await b.apply(LoadRequest(image, topology, 3, "load", force_load=True, read_key=lambda: same))
    assert len(kexec.loads) == 3 and not b.stale_reason
    result = await b.apply(LoadRequest(image, topology, 4, "burst"))
    assert len(kexec.loads) == 3 and not result.loaded


async def test_an_event_between_building_the_header_and_the_syscall_is_not_lost(
    sysroot: Path,
) -> None:
    kexec = ScriptedKexec()
    b = backend(sysroot, kexec)
    holder = TopologyHolder()
    r = reconciler(sysroot, b, holder)
    prepare = b.prepare

    def prepare_then_hotplug(image: CrashImage, topology: Topology) -> SegmentImage:
        built = prepare(image, topology)
        if holder.blocks == 0:
            holder.add_blocks(1)  # after the header was built, before the syscall
        return built

    b.prepare = prepare_then_hotplug  # type: ignore[method-assign]
    await r.start()
    # the re-read right after the load sees the block; the header lacks it: load again
    assert len(kexec.loads) == 2
    assert kexec.loads[1][1][0][0] != kexec.loads[0][1][0][0]  # the header with the block
    s = r.store.current
    assert s.state == ImageState.LOADED and not s.stale and not b.stale_reason
    r.request("hot-add")  # that block's uevent burst: the kernel keeps the new image current
    await r.settle()
    assert len(kexec.loads) == 2
    await r.stop()


async def test_a_restored_image_is_not_trusted_to_be_current(sysroot: Path) -> None:
    kexec = ScriptedKexec()
    b = backend(sysroot, kexec)
    topology = TopologyHolder()(sysroot)
    image = default_image_factory()(topology)
    await b.apply(LoadRequest(image, topology, 1, "start"))
    await b.restore(LoadRequest(image, topology, 2, "burst"))  # after a failed load
    assert len(kexec.loads) == 2 and "restored" in b.stale_reason
    result = await b.apply(LoadRequest(image, topology, 2, "retry"))
    assert result.loaded and len(kexec.loads) == 3 and not b.stale_reason


async def test_crash_hotplug_reading_0_twice_after_our_load_makes_bursts_load(
    sysroot: Path,
) -> None:
    """crash_hotplug reads 0 whenever its own trylock fails: one 0 is re-read after a
    pause; 0 again means the kernel may not update this image, so bursts load."""
    reads = [False, False, False, True, False, True]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    kexec = ScriptedKexec()
    b = backend(
        sysroot,
        kexec,
        read_hotplug=lambda _root: reads.pop(0),
        hotplug_reread_delay=0.25,
        sleep=sleep,
    )
    topology = TopologyHolder()(sysroot)
    image = default_image_factory()(topology)
    result = await b.apply(LoadRequest(image, topology, 1, "start"))
    assert slept == [0.25] and b.hotplug_flag is False
    assert not result.kernel_updates_in_place and "read 0 twice" in b.not_updated
    result = await b.apply(LoadRequest(image, topology, 2, "burst"))  # must not trust it
    assert result.loaded and len(kexec.loads) == 2
    assert slept == [0.25, 0.25] and b.hotplug_flag is True and not b.not_updated
    assert result.kernel_updates_in_place
    result = await b.apply(LoadRequest(image, topology, 3, "burst"))
    assert not result.loaded and len(kexec.loads) == 2
    # one 0 (a busy lock), then 1: trusted, no load on the next burst
    result = await b.apply(LoadRequest(image, topology, 4, "load", force_load=True))
    assert len(slept) == 3 and b.hotplug_flag is True and result.kernel_updates_in_place
    result = await b.apply(LoadRequest(image, topology, 5, "burst"))
    assert not result.loaded and len(kexec.loads) == 3 and not reads


async def test_the_kernel_log_or_an_unload_makes_the_next_burst_load(sysroot: Path) -> None:
    kexec = ScriptedKexec()
    b = backend(sysroot, kexec)
    topology = TopologyHolder()(sysroot)
    image = default_image_factory()(topology)
    await b.apply(LoadRequest(image, topology, 1, "start"))
    await b.apply(LoadRequest(image, topology, 2, "kernel log", force_load=True))
    assert len(kexec.loads) == 2
    await b.unload()
    assert kexec.loads[-1][2] == KEXEC_ON_CRASH and not b.own_load
    await b.apply(LoadRequest(image, topology, 3, "load"))
    assert len(kexec.loads) == 4


# --- EFI: the RSDP when boot_params has none ------------------------------------------


def _boot_params(root: Path, rsdp: int) -> None:
    bp = bytearray(4096)
    bp[0x70:0x78] = rsdp.to_bytes(8, "little")
    (root / "sys/kernel/boot_params").mkdir(parents=True, exist_ok=True)
    (root / "sys/kernel/boot_params/data").write_bytes(bytes(bp))


def _systab(root: Path, text: str) -> None:
    (root / "sys/firmware/efi").mkdir(parents=True, exist_ok=True)
    (root / "sys/firmware/efi/systab").write_text(text)


def test_rsdp_from_the_efi_systab_when_boot_params_has_none(tmp_path: Path) -> None:
    from kdumpd.arch.x86_64.bootparams import running_rsdp
    from kdumpd.daemon.backends.segment import read_efi_rsdp, read_running_boot_params

    _boot_params(tmp_path, 0)
    assert running_rsdp(read_running_boot_params(tmp_path)) == 0  # not an EFI machine
    _systab(tmp_path, "SMBIOS3=0x7f8ec000\nACPI=0x7fb7e014\nACPI20=0x7fb7e000\n")
    assert read_efi_rsdp(tmp_path) == 0x7FB7E000  # ACPI 2.0 first
    assert running_rsdp(read_running_boot_params(tmp_path)) == 0x7FB7E000
    _boot_params(tmp_path, 0xF5A20)  # the decompressor recorded one: it wins
    assert running_rsdp(read_running_boot_params(tmp_path)) == 0xF5A20
    _systab(tmp_path, "ACPI=0x7fb7e014\n")
    assert read_efi_rsdp(tmp_path) == 0x7FB7E014
    for bad in ("ACPI20=7fb7e000\n", "ACPI20=0x\n", "ACPI20=0x" + "f" * 17 + "\n", "junk"):
        _systab(tmp_path, bad)
        assert read_efi_rsdp(tmp_path) == 0


@pytest.mark.parametrize("unreadable", ["missing", "a directory", "too short"])
def test_rsdp_from_the_efi_systab_when_boot_params_cannot_be_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, unreadable: str
) -> None:
    """No readable boot_params (a sysroot without them, a read error, a short file):
    not a silent 0 (the capture kernel would find no ACPI on UEFI-only firmware) but
    one warning and the RSDP from the EFI systab, ACPI20= before ACPI=."""
    from kdumpd.arch.x86_64.bootparams import running_rsdp
    from kdumpd.daemon.backends.segment import read_running_boot_params

    data = tmp_path / "sys/kernel/boot_params/data"
    if unreadable == "a directory":
        data.mkdir(parents=True)
    elif unreadable == "too short":
        data.parent.mkdir(parents=True)
        data.write_bytes(bytes(0x40))
    _systab(tmp_path, "SMBIOS3=0x7f8ec000\nACPI=0x7fb7e014\nACPI20=0x7fb7e000\n")
    with caplog.at_level("WARNING", logger="kdumpd.daemon.backends.segment"):
        assert running_rsdp(read_running_boot_params(tmp_path)) == 0x7FB7E000
        _systab(tmp_path, "ACPI=0x7fb7e014\n")
        assert running_rsdp(read_running_boot_params(tmp_path)) == 0x7FB7E014
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings  # once
    assert "/sys/kernel/boot_params/data" in warnings[0] and "0x7fb7e000" in warnings[0]
    (tmp_path / "sys/firmware/efi/systab").unlink()  # not an EFI machine: nothing to give
    assert read_running_boot_params(tmp_path) in (b"", bytes(0x40))


async def test_the_loaded_boot_params_carry_the_systab_rsdp_without_boot_params(
    sysroot: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the back-end: the setup segment handed to kexec_load has the systab's
    RSDP in acpi_rsdp_addr when /sys/kernel/boot_params/data is missing."""
    assert not (sysroot / "sys/kernel/boot_params/data").exists()
    _systab(sysroot, "ACPI20=0x7fb7e000\n")
    kexec = ScriptedKexec()
    b = backend(sysroot, kexec, in_place=False)
    r = reconciler(sysroot, b, TopologyHolder())
    with caplog.at_level("WARNING", logger="kdumpd.daemon.backends.segment"):
        await r.start()
    assert r.store.current.state == ImageState.LOADED
    setup = kexec.loads[0][1][2][0]
    assert int.from_bytes(setup[0x70:0x78], "little") == 0x7FB7E000
    assert "cannot read /sys/kernel/boot_params/data" in caplog.text
    await r.stop()


async def test_a_header_too_small_for_the_kernels_rebuild_loads_every_burst(
    sysroot: Path,
) -> None:
    import dataclasses

    from kdumpd.daemon.backends.segment import too_small_for_the_kernel

    kexec = ScriptedKexec()
    b = backend(sysroot, kexec)
    topology = TopologyHolder()(sysroot)
    # an operator override sized for 4 CPUs on a machine with 400 possible ones
    image = default_image_factory(max_cpus=4, max_ranges=8)(topology)
    many = dataclasses.replace(topology, possible_cpus=tuple(range(400)))
    assert image.elfcorehdr.memsz == 16384  # the 16 KiB minimum
    assert "smaller than the kernel's own rebuild" in too_small_for_the_kernel(16384, many)
    assert too_small_for_the_kernel(16384, topology) == ""
    await b.apply(LoadRequest(image, many, 1, "start"))
    await b.apply(LoadRequest(image, many, 2, "burst"))
    assert len(kexec.loads) == 2
    await b.apply(LoadRequest(image, topology, 3, "burst"))
    assert len(kexec.loads) == 2
