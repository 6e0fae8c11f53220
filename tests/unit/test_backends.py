"""Backends and the fault policy, with scripted syscall objects (no monkeypatching)."""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kdumpd.daemon.backends.dryrun import DryRunBackend
from kdumpd.daemon.backends.file import (
    DEFAULT_APPEND,
    FileBackend,
    crash_cmdline,
    default_files,
)
from kdumpd.daemon.backends.kernel import KernelBackend
from kdumpd.daemon.backends.probe import probe_backend
from kdumpd.daemon.control import Operations
from kdumpd.daemon.reconciler import Reconciler
from kdumpd.daemon.state import ImageState, StateStore
from kdumpd.events.event import HotplugEvent
from kdumpd.system.kexec import (
    KEXEC_FILE_NO_INITRAMFS,
    KEXEC_FILE_ON_CRASH,
    KEXEC_FILE_UNLOAD,
)
from tests.unit.daemon_fakes import FIXTURE, ScriptedKexec, TopologyHolder, reconciler

EV = HotplugEvent("online", "memory", "/devices/system/memory/memory512")


@pytest.fixture
def sysroot(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    rel = (root / "proc/sys/kernel/osrelease").read_text().strip()
    (root / "boot").mkdir()
    (root / f"boot/vmlinuz-{rel}").write_bytes(b"MZ fake kernel")
    (root / "var/lib/kdump").mkdir(parents=True)
    (root / f"var/lib/kdump/initrd.img-{rel}").write_bytes(b"fake initrd")
    (root / "proc/cmdline").write_text(
        "BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro crashkernel=256M quiet\n"
    )
    return root


def file_backend(sysroot: Path, kexec: ScriptedKexec) -> FileBackend:
    return FileBackend(kexec, default_files(sysroot), sysroot)


def test_crash_cmdline_like_kdump_utils() -> None:
    assert (
        crash_cmdline("BOOT_IMAGE=/v root=/dev/sda crashkernel=1G-:256M nr_cpus=8 quiet")
        == "root=/dev/sda irqpoll nr_cpus=1 reset_devices acpi_no_memhotplug"
    )
    # kdump-utils' default KDUMP_COMMANDLINE_REMOVE and prepare_cmdline() removals
    boot = (
        "root=UUID=1 rd.lvm.lv=vg/root hugepages=512 hugepagesz=2M cma=64M slub_debug=FZ "
        "log_buf_len=1M swiotlb=65536 hugetlb_cma=1G panic_on_warn=1 ignition.firstboot "
        'console=ttyS0 dyndbg="file foo.c +p"'
    )
    assert crash_cmdline(boot, "") == (
        'root=UUID=1 rd.lvm.lv=vg/root console=ttyS0 dyndbg="file foo.c +p"'
    )


def test_default_files_resolve_below_sysroot(sysroot: Path) -> None:
    f = default_files(sysroot)
    assert f.kernel.startswith(str(sysroot / "boot/vmlinuz-"))
    assert f.initrd is not None and "/var/lib/kdump/initrd.img-" in f.initrd
    assert "crashkernel" not in f.cmdline and f.cmdline.endswith(DEFAULT_APPEND)


async def test_file_backend_one_syscall_never_unload(sysroot: Path) -> None:
    kexec = ScriptedKexec()
    holder = TopologyHolder()
    r = reconciler(sysroot, file_backend(sysroot, kexec), holder)
    await r.start()
    holder.add_blocks(4)
    for _ in range(50):
        r.event(EV)
    await r.settle()
    assert len(kexec.calls) == 2
    assert all(flags == KEXEC_FILE_ON_CRASH for _, flags in kexec.calls)
    assert not any(flags & KEXEC_FILE_UNLOAD for _, flags in kexec.calls)
    assert kexec.calls[0][0].endswith(DEFAULT_APPEND.encode())
    await r.stop()


async def test_no_initrd_sets_no_initramfs(sysroot: Path) -> None:
    for p in (sysroot / "var/lib/kdump").iterdir():
        p.unlink()
    kexec = ScriptedKexec()
    b = file_backend(sysroot, kexec)
    assert b.files.initrd is None
    r = reconciler(sysroot, b, TopologyHolder())
    await r.start()
    assert kexec.calls[0][1] == KEXEC_FILE_ON_CRASH | KEXEC_FILE_NO_INITRAMFS
    await r.stop()


async def test_ebusy_is_retried_with_backoff(sysroot: Path) -> None:
    kexec = ScriptedKexec([errno.EBUSY, errno.EBUSY])
    slept: list[float] = []

    async def sleep(d: float) -> None:
        slept.append(d)

    holder = TopologyHolder()
    r = Reconciler(
        StateStore(),
        file_backend(sysroot, kexec),
        sysroot=sysroot,
        state_dir=sysroot / "run/kdumpd",
        read_topology=holder,
        sleep=sleep,
    )
    await r.start()
    assert len(kexec.calls) == 3
    assert slept == [0.05, 0.1]
    s = r.store.current
    assert s.state == ImageState.LOADED and s.loads == 1 and s.last_error == ""
    await r.stop()


async def test_eperm_from_kexec_file_load_is_not_retried_with_kexec_file_load(
    sysroot: Path,
) -> None:
    # kernel and file backends both call kexec_file_load: switching kernel -> file would
    # fail the same way (and downgrade a 6.6+ machine for good)
    kexec = ScriptedKexec([errno.EPERM])
    kb = KernelBackend(file_backend(sysroot, kexec), sysroot, hotplug_config=True)
    fallback_kexec = ScriptedKexec()
    r = reconciler(
        sysroot,
        kb,
        TopologyHolder(),
        fallback_backend=lambda: file_backend(sysroot, fallback_kexec),
    )
    await r.start()
    s = r.store.current
    assert r.backend is kb and s.backend == "kernel"
    assert fallback_kexec.calls == [] and len(kexec.calls) == 1
    assert s.state == ImageState.FAILED
    assert s.last_error == (
        "kexec_file_load: EPERM — unsigned kernel under lockdown, "
        "kernel.kexec_load_disabled=1 or kernel.kexec_load_limit_panic used up"
    )
    await r.stop()


async def test_eperm_from_kexec_load_backend_falls_back_to_kexec_file_load(
    sysroot: Path,
) -> None:
    from tests.unit.daemon_fakes import RecordingBackend

    segments = RecordingBackend("segments", load_syscall="kexec_load")
    segments.faults = [errno.EPERM]
    fallback_kexec = ScriptedKexec()
    r = reconciler(
        sysroot,
        segments,
        TopologyHolder(),
        fallback_backend=lambda: file_backend(sysroot, fallback_kexec),
    )
    await r.start()
    assert r.backend.name == "file" and r.store.current.backend == "file"
    assert len(fallback_kexec.calls) == 1
    assert r.store.current.state == ImageState.LOADED
    await r.stop()


async def test_eperm_on_file_backend_is_a_failure_not_a_loop(sysroot: Path) -> None:
    kexec = ScriptedKexec([errno.EPERM])
    r = reconciler(
        sysroot,
        file_backend(sysroot, kexec),
        TopologyHolder(),
        fallback_backend=lambda: file_backend(sysroot, kexec),
    )
    await r.start()
    s = r.store.current
    assert s.state == ImageState.FAILED and "EPERM" in s.last_error
    assert len(kexec.calls) == 1
    await r.stop()


@pytest.mark.parametrize("err", [errno.ENOMEM, errno.EINVAL, errno.ENOEXEC])
async def test_hard_fault_degrades_and_restores_last_good(sysroot: Path, err: int) -> None:
    kexec = ScriptedKexec()
    holder = TopologyHolder()
    r = reconciler(sysroot, file_backend(sysroot, kexec), holder)
    await r.start()
    assert r.store.current.state == ImageState.LOADED
    kexec.errnos = [err]
    holder.add_blocks(2)
    r.event(EV)
    await r.settle()
    s = r.store.current
    name = errno.errorcode[err]
    assert s.state == ImageState.DEGRADED, s
    assert name in s.last_error and s.stale
    assert len(kexec.calls) == 3  # start, failed load, restore of the last good files
    assert r.retry.scheduled  # a retry is scheduled
    # the retry succeeds and clears the degraded state
    r.request("retry")
    await r.settle()
    assert r.store.current.state == ImageState.LOADED and not r.store.current.stale
    await r.stop()


async def test_hard_fault_without_restore_is_failed_and_loud(
    sysroot: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kexec = ScriptedKexec([errno.ENOEXEC])
    r = reconciler(sysroot, file_backend(sysroot, kexec), TopologyHolder())
    await r.start()
    assert r.store.current.state == ImageState.FAILED
    assert "ENOEXEC" in r.store.current.last_error
    assert any("NO CRASH KERNEL IS LOADED" in m for m in caplog.messages)
    await r.stop()


def hotplug_sysroot(sysroot: Path, flag: str = "1") -> None:
    (sysroot / "sys/kernel/kexec_crash_loaded").write_text("1\n")
    (sysroot / "sys/devices/system/memory/crash_hotplug").write_text(f"{flag}\n")
    (sysroot / "sys/devices/system/cpu/crash_hotplug").write_text(f"{flag}\n")


class CountingHotplugReader:
    """Counts reads of crash_hotplug (each one takes the kernel's kexec lock)."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self, sysroot: Path) -> bool | None:
        from kdumpd.system.kexecsysfs import read_crash_hotplug

        self.reads += 1
        return read_crash_hotplug(sysroot)


async def test_kernel_backend_takes_no_kexec_lock_per_burst(sysroot: Path) -> None:
    kexec = ScriptedKexec()
    hotplug_sysroot(sysroot)
    reader = CountingHotplugReader()
    kb = KernelBackend(file_backend(sysroot, kexec), sysroot, read_hotplug=reader)
    assert kb.hotplug_config  # probed once, from the files' existence
    holder = TopologyHolder()
    r = reconciler(sysroot, kb, holder)
    await r.start()
    assert len(kexec.calls) == 1 and reader.reads == 1  # one verification after our load
    for _ in range(5):
        holder.add_blocks(8)
        r.event(EV)
        await r.settle()
    assert len(kexec.calls) == 1, "kernel backend must not reload on hotplug"
    assert reader.reads == 1, "crash_hotplug (kexec_trylock) must not be read per burst"
    s = r.store.current
    assert s.kernel_hotplug_support and s.generation == 6 and s.loads == 1
    assert s.covered_ranges[-1][1] == holder.ram_end
    await r.stop()


async def test_kernel_backend_does_not_reload_own_image_when_crash_hotplug_reads_0(
    sysroot: Path,
) -> None:
    # 0 is what crash_hotplug reads while the kernel holds the kexec lock (§0.5); an
    # image we loaded with kexec_file_load is hotplug-capable by construction
    kexec = ScriptedKexec()
    hotplug_sysroot(sysroot, "0")
    kb = KernelBackend(file_backend(sysroot, kexec), sysroot)
    holder = TopologyHolder()
    r = reconciler(sysroot, kb, holder)
    await r.start()
    for _ in range(3):
        holder.add_blocks(1)
        r.event(EV)
        await r.settle()
    assert len(kexec.calls) == 1
    await r.stop()


async def test_kernel_backend_reloads_when_no_image_or_foreign_image(sysroot: Path) -> None:
    from kdumpd.daemon.backends.base import LoadRequest

    kexec = ScriptedKexec()
    hotplug_sysroot(sysroot)
    holder = TopologyHolder()
    req = LoadRequest(None, holder.current, 1, "burst")
    kb = KernelBackend(file_backend(sysroot, kexec), sysroot)
    # loaded by another loader (e.g. kdumpctl before us): we cannot know it is
    # hotplug-capable, so it is replaced once
    res = await kb.apply(req)
    assert res.loaded and len(kexec.calls) == 1 and kb.own_file_load
    res = await kb.apply(req)
    assert not res.loaded and res.kernel_updates_in_place and len(kexec.calls) == 1
    # someone unloaded it (kexec_crash_loaded is lock-free): load again
    (sysroot / "sys/kernel/kexec_crash_loaded").write_text("0\n")
    res = await kb.apply(req)
    assert res.loaded and len(kexec.calls) == 2
    # an image adopted from our own state.json counts as ours
    (sysroot / "sys/kernel/kexec_crash_loaded").write_text("1\n")
    kb2 = KernelBackend(file_backend(sysroot, kexec), sysroot)
    kb2.adopt()
    assert not (await kb2.apply(req)).loaded and len(kexec.calls) == 2
    # without CONFIG_CRASH_HOTPLUG nothing updates the image: every burst loads
    kb3 = KernelBackend(file_backend(sysroot, kexec), sysroot, hotplug_config=False)
    kb3.adopt()
    assert (await kb3.apply(req)).loaded and len(kexec.calls) == 3


def fake_bzimage(path: Path, *, version: int = 0x020F, cmdline_size: int = 2048) -> None:
    import struct

    hdr = bytearray(0x240)
    hdr[0x1FE:0x200] = b"\x55\xaa"
    hdr[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", hdr, 0x206, version)
    struct.pack_into("<I", hdr, 0x238, cmdline_size)
    path.write_bytes(bytes(hdr) + b"\0" * 4096)


def test_bzimage_cmdline_size_from_setup_header(tmp_path: Path) -> None:
    from kdumpd.arch.x86_64.bzimage import cmdline_size as bzimage_cmdline_size

    k = tmp_path / "bz"
    fake_bzimage(k, cmdline_size=4096)
    assert bzimage_cmdline_size(k.read_bytes()) == 4096
    fake_bzimage(k, version=0x0205, cmdline_size=4096)  # field exists from 2.06 on
    assert bzimage_cmdline_size(k.read_bytes()) == 255
    assert bzimage_cmdline_size(b"MZ arm64 Image" + bytes(0x300)) is None


def test_too_long_cmdline_fails_before_the_syscall(tmp_path: Path) -> None:
    from kdumpd.core.errors import InputError
    from kdumpd.system.kexec import crash_file_load

    k = tmp_path / "bz"
    fake_bzimage(k, cmdline_size=2048)
    kexec = ScriptedKexec()
    # the kernel needs len + 1 (NUL) + 30 (elfcorehdr=0x<64 bit>) <= cmdline_size
    crash_file_load(kexec, str(k), None, "x" * (2048 - 31))
    assert len(kexec.calls) == 1
    with pytest.raises(InputError, match="at most 2017"):
        crash_file_load(kexec, str(k), None, "x" * (2048 - 30))
    assert len(kexec.calls) == 1
    with pytest.raises(InputError, match="at most 1986"):  # dm-crypt keys: 31 more
        crash_file_load(kexec, str(k), None, "x" * (2048 - 31), reserve=31)
    with pytest.raises(InputError, match="cannot read kdump initrd"):
        crash_file_load(kexec, str(k), str(tmp_path / "missing.img"), "ro")
    assert len(kexec.calls) == 1


async def test_too_long_cmdline_keeps_the_loaded_image(sysroot: Path) -> None:
    kexec = ScriptedKexec()
    rel = (sysroot / "proc/sys/kernel/osrelease").read_text().strip()
    fake_bzimage(sysroot / f"boot/vmlinuz-{rel}", cmdline_size=256)
    holder = TopologyHolder()
    b = file_backend(sysroot, kexec)
    r = reconciler(sysroot, b, holder)
    await r.start()
    (sysroot / "sys/kernel/kexec_crash_loaded").write_text("1\n")  # the kernel has it
    assert len(kexec.calls) == 1 and r.store.current.state == ImageState.LOADED
    room = 256 - 1 - 30 - len(b.files.cmdline)
    (sysroot / "sys/kernel/config/crash_dm_crypt_keys/cryptsetup:1").mkdir(parents=True)
    b.files = dataclasses.replace(b.files, cmdline=b.files.cmdline + " " * room)
    holder.add_blocks(1)
    r.event(EV)
    await r.settle()
    s = r.store.current
    assert len(kexec.calls) == 1, "no syscall (it would free the old image first), no restore"
    assert s.state == ImageState.DEGRADED and "kexec cmdline" in s.last_error and s.stale
    await r.stop()


async def test_dry_run_writes_segments_and_log(tmp_path: Path) -> None:
    holder = TopologyHolder()
    b = DryRunBackend(tmp_path)
    r = reconciler(tmp_path, b, holder)
    await r.start()
    holder.add_blocks(3)
    r.event(EV)
    await r.settle()
    lines = [json.loads(x) for x in (tmp_path / "loads.jsonl").read_text().splitlines()]
    assert [x["load"] for x in lines] == [1, 2]
    assert lines[1]["ranges"][-1][1] == holder.ram_end
    assert lines[1]["counters"]["events_received"] == 1
    hdr = (tmp_path / "loads/0002.elfcorehdr").read_bytes()
    assert hdr[:4] == b"\x7fELF" and len(hdr) == lines[1]["elfcorehdr_used"]
    if shutil.which("readelf") is None:
        pytest.skip("binutils readelf not installed")
    out = subprocess.run(
        ["readelf", "-lW", str(tmp_path / "loads/0002.elfcorehdr")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"0x{holder.ram_end - (3 << 27) + 1:016x}" in out  # the hot-added range
    assert b.is_loaded()
    await b.unload()
    assert not b.is_loaded()
    await r.stop()


def test_probe(tmp_path: Path, sysroot: Path) -> None:
    assert probe_backend(tmp_path)[0] == "dry-run"
    (sysroot / "sys/kernel/kexec_crash_size").write_text("268435456\n")
    assert probe_backend(sysroot, euid=1000)[0] == "dry-run"

    def has(m: str) -> bool:
        return True

    # x86_64 with kexec_load allowed and a built purgatory: segment, else file
    assert probe_backend(sysroot, euid=0, file_load=has, machine="x86_64")[0] in ("segment", "file")
    (sysroot / "proc/sys/kernel/kexec_load_disabled").write_text("1\n")
    assert probe_backend(sysroot, euid=0, file_load=has, machine="x86_64")[0] == "file"
    (sysroot / "sys/kernel/crash_elfcorehdr_size").write_text("917616\n")
    assert probe_backend(sysroot, euid=0, file_load=has)[0] == "kernel"
    (sysroot / "sys/kernel/kexec_crash_size").write_text("0\n")
    assert probe_backend(sysroot, euid=0, file_load=has)[0] == "dry-run"


def test_file_input_digests_follow_kernel_initrd_and_cmdline(sysroot: Path) -> None:
    import os

    b = file_backend(sysroot, ScriptedKexec())
    d0 = b.input_digests()
    assert set(d0) == {"kernel", "initrd", "cmdline"}
    assert b.files.initrd is not None
    Path(b.files.initrd).write_bytes(b"rebuilt kdump initrd")  # kdumpctl rebuild
    os.utime(b.files.initrd, ns=(1, 1))
    d1 = b.input_digests()
    assert d1["initrd"] != d0["initrd"] and d1["kernel"] == d0["kernel"]
    b.files = dataclasses.replace(b.files, cmdline=b.files.cmdline + " x=1")
    assert b.input_digests()["cmdline"] != d1["cmdline"]


async def test_dry_run_chosen_by_the_daemon_keeps_the_last_loads(tmp_path: Path) -> None:
    from kdumpd.config import load_settings
    from kdumpd.daemon.backends.dryrun import KEEP_LOADS
    from kdumpd.daemon.backends.probe import make_backend

    b = make_backend("dry-run", load_settings(None, {"state_dir": str(tmp_path)}, env={}))
    assert isinstance(b, DryRunBackend) and b.keep == KEEP_LOADS
    b.keep = 3
    holder = TopologyHolder()
    r = reconciler(tmp_path, b, holder)
    await r.start()
    for _ in range(5):
        holder.add_blocks(1)
        r.event(EV)
        await r.settle()
    kept = sorted({p.name.split(".")[0] for p in (tmp_path / "loads").iterdir()})
    assert kept == ["0004", "0005", "0006"]
    await r.stop()


def test_auto_on_the_live_root_without_kexec_says_dry_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kdumpd.config import load_settings
    from kdumpd.service import Daemon

    if probe_backend("/")[0] != "dry-run":
        pytest.skip("this machine has kexec support")
    s = load_settings(None, {"state_dir": str(tmp_path), "backend": "auto"}, env={})
    assert Daemon(s, env={})._backend_name(s)[0] == "dry-run"
    assert any(
        "no kexec support: running in dry-run, nothing is loaded" in m for m in caplog.messages
    )


async def test_kernel_backend_keeps_its_own_image_after_a_refused_load(sysroot: Path) -> None:
    from kdumpd.daemon.backends.base import LoadRequest
    from kdumpd.daemon.backends.file import KexecFiles

    class LoadingKexec(ScriptedKexec):
        def file_load(self, kernel_fd: int, initrd_fd: int, cmdline: bytes, flags: int) -> None:
            try:
                super().file_load(kernel_fd, initrd_fd, cmdline, flags)
            except Exception:
                # the kernel freed the old image before failing (§4.7)
                (sysroot / "sys/kernel/kexec_crash_loaded").write_text("0\n")
                raise
            (sysroot / "sys/kernel/kexec_crash_loaded").write_text("1\n")

    kexec = LoadingKexec()
    hotplug_sysroot(sysroot)
    fb = file_backend(sysroot, kexec)
    kb = KernelBackend(fb, sysroot)
    holder = TopologyHolder()
    req = LoadRequest(None, holder.current, 1, "burst")
    forced = dataclasses.replace(req, force_load=True)
    assert (await kb.apply(forced)).loaded and kb.own_file_load
    good = fb.files
    # a refusal before the syscall (a Reload with a missing kernel): our image stays
    fb.files = KexecFiles(str(sysroot / "boot/missing"), None, "console=ttyS0")
    with pytest.raises(Exception, match="missing"):
        await kb.apply(forced)
    fb.files = good
    assert kb.own_file_load
    assert not (await kb.apply(req)).loaded and len(kexec.calls) == 1
    # a failed syscall freed it: the next burst loads
    kexec.errnos = [errno.EINVAL]
    with pytest.raises(Exception, match="EINVAL"):
        await kb.apply(forced)
    assert not kb.own_file_load
    assert (await kb.apply(req)).loaded and len(kexec.calls) == 3


async def test_kernel_backend_adopts_only_a_hotplug_capable_image(sysroot: Path) -> None:
    hotplug_sysroot(sysroot)
    kexec = ScriptedKexec()
    naps: list[float] = []
    reads: list[bool | None] = [False, False, True]
    kb = KernelBackend(
        file_backend(sysroot, kexec),
        sysroot,
        read_hotplug=lambda _p: reads.pop(0),
        sleep=naps.append,
    )
    assert kb.adopt() and kb.own_file_load  # a 0 while the kexec lock was busy, then 1
    assert len(naps) == 2
    kb2 = KernelBackend(
        file_backend(sysroot, kexec), sysroot, read_hotplug=lambda _p: False, sleep=naps.append
    )
    assert not kb2.adopt() and not kb2.own_file_load

    # through the reconciler: another loader replaced our image while we were stopped
    holder = TopologyHolder()
    r = reconciler(sysroot, KernelBackend(file_backend(sysroot, kexec), sysroot), holder)
    await r.start()
    await r.stop()
    assert len(kexec.calls) == 1
    hotplug_sysroot(sysroot, "0")  # `kexec -p` (kexec_load without --hotplug)
    kb3 = KernelBackend(file_backend(sysroot, kexec), sysroot, sleep=naps.append)
    r = reconciler(sysroot, kb3, holder)
    await r.start()
    assert len(kexec.calls) == 2 and kb3.own_file_load  # loaded once afresh
    holder.add_blocks(1)
    r.event(EV)
    await r.settle()
    assert len(kexec.calls) == 2  # and then the kernel keeps it current
    await r.stop()
    # our own image: adopted, no load
    hotplug_sysroot(sysroot, "1")
    r = reconciler(sysroot, KernelBackend(file_backend(sysroot, kexec), sysroot), holder)
    await r.start()
    assert len(kexec.calls) == 2 and r.store.current.last_trigger == "adopt"
    await r.stop()


async def test_file_backend_adopts_only_with_recorded_input_digests(sysroot: Path) -> None:
    import json as _json

    hotplug_sysroot(sysroot)
    kexec = ScriptedKexec()
    holder = TopologyHolder()
    r = reconciler(sysroot, file_backend(sysroot, kexec), holder)
    await r.start()
    await r.stop()
    path = sysroot / "run/kdumpd/state.json"
    rec = _json.loads(path.read_text())
    assert rec["inputs"]
    rec["inputs"] = {}  # an older state.json (or another writer) without digests
    path.write_text(_json.dumps(rec))
    r = reconciler(sysroot, file_backend(sysroot, kexec), holder)
    await r.start()
    assert len(kexec.calls) == 2 and r.store.current.last_trigger == "start"
    await r.stop()


async def test_dry_run_log_is_bounded_and_keeps_counting(tmp_path: Path) -> None:
    from kdumpd.daemon.backends.base import LoadRequest

    holder = TopologyHolder()
    b = DryRunBackend(tmp_path, keep=4)
    r = reconciler(tmp_path, b, holder)
    await r.start()
    for _ in range(20):
        holder.add_blocks(1)
        r.event(EV)
        await r.settle()
    await r.stop()
    log = tmp_path / "loads.jsonl"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert 4 <= len(lines) < 8, len(lines)
    assert [x["load"] for x in lines] == list(range(22 - len(lines), 22))
    assert b.is_loaded() and b.last_record() == lines[-1]
    # a restarted backend continues the numbering and still sees the last state
    b2 = DryRunBackend(tmp_path, keep=4)
    assert b2.loads == 21 and b2.is_loaded()
    await b2.unload()
    assert not DryRunBackend(tmp_path, keep=4).is_loaded()
    assert r.image is not None
    await b2.apply(LoadRequest(r.image, holder.current, 99, "t"))
    assert b2.last_record()["load"] == 22  # type: ignore[index]
    assert len(log.read_text().splitlines()) < 8


def test_dry_run_last_record_reads_a_long_last_line(tmp_path: Path) -> None:
    long = json.dumps({"load": 7, "cpus": list(range(40000))})
    (tmp_path / "loads.jsonl").write_text('{"load":6}\n' + long + "\n")
    b = DryRunBackend(tmp_path)
    assert b.loads == 7 and b.last_record() == json.loads(long)


async def test_kernel_backend_reloads_once_after_ram_is_hot_removed(sysroot: Path) -> None:
    """The kernel rebuilds its elfcorehdr at MEM_OFFLINE, while the block's System RAM
    resource still exists, and not at removal: after a hot-remove the loaded header
    still lists the gone range (seen on Debian 6.12 in QEMU).  One reload repairs it;
    adding RAM, or the burst after, costs nothing."""
    kexec = ScriptedKexec()
    hotplug_sysroot(sysroot)
    kb = KernelBackend(file_backend(sysroot, kexec), sysroot, read_hotplug=lambda _p: True)
    holder = TopologyHolder()
    holder.set_blocks(4)
    r = reconciler(sysroot, kb, holder)
    await r.start()
    assert len(kexec.calls) == 1
    holder.add_blocks(2)  # hot-add: the kernel updates in place
    r.event(EV)
    await r.settle()
    assert len(kexec.calls) == 1
    holder.set_blocks(3)  # three blocks removed from /proc/iomem
    r.event(EV)
    await r.settle()
    assert len(kexec.calls) == 2, "a hot-remove must be repaired with one load"
    r.event(EV)  # e.g. the remove's trailing uevents: nothing changed any more
    await r.settle()
    assert len(kexec.calls) == 2
    assert r.store.current.stale is False
    await r.stop()


def test_removed_ram_needs_no_reload_on_ppc64() -> None:
    """powerpc's handler cuts the offlined range out of the header it rebuilds at
    MEM_OFFLINE: nothing is left over, so a hot-remove costs no load there (a reload
    by kexec-tools would even leave memory above linux,memory-limit out)."""
    from kdumpd.daemon.backends.inplace import RemovedRam
    from kdumpd.system.topologyreader import read_topology

    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    for name, expect_reason in (("guest-6.12-after", True), ("guest-ppc64le-6.12-after", False)):
        after = read_topology(fixtures / name)
        ram = after.system_ram
        last = ram[-1]
        fewer = tuple(r for r in after.iomem if r.range != last)
        before_removal = dataclasses.replace(after, iomem=after.iomem)
        removed = dataclasses.replace(after, iomem=fewer)
        guard = RemovedRam()
        assert guard.check(before_removal) == ""
        assert bool(guard.check(removed)) is expect_reason, name


class HotplugDuringLoad(ScriptedKexec):
    """A kexec_file_load during which memory is hot-added (``during`` = which calls).

    While a load syscall runs it holds the kexec lock, and the kernel's crash-hotplug
    handler skips its in-place update ("kexec_trylock() failed")."""

    def __init__(self, holder: TopologyHolder, during: set[int]) -> None:
        super().__init__()
        self.holder = holder
        self.during = during

    def file_load(self, kernel_fd: int, initrd_fd: int, cmdline: bytes, flags: int) -> None:
        super().file_load(kernel_fd, initrd_fd, cmdline, flags)
        if len(self.calls) in self.during:
            self.holder.add_blocks(2)


async def test_kernel_backend_loads_again_when_the_topology_moved_during_its_load(
    sysroot: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hotplug_sysroot(sysroot)
    holder = TopologyHolder()
    kexec = HotplugDuringLoad(holder, during={1})
    kb = KernelBackend(file_backend(sysroot, kexec), sysroot, read_hotplug=lambda _p: True)
    r = reconciler(sysroot, kb, holder)
    with caplog.at_level("INFO"):
        await r.start()
    assert len(kexec.calls) == 2, "the update skipped during our load must be reloaded, once"
    assert r.store.current.loads == 2
    assert "changed while the load syscall held the kexec lock" in caplog.text
    assert "loaded twice" in caplog.text  # the reconciler's "generation N applied" line
    r.event(EV)  # the DIMM's uevents, read after the load
    await r.settle()
    assert len(kexec.calls) == 2, "the extra load covered the new DIMM already"
    assert r.store.current.covered_ranges[-1][1] == holder.ram_end
    # a later load (Reload) during which nothing happens costs one syscall
    await Operations(r).reload()
    assert len(kexec.calls) == 3 and r.store.current.loads == 3
    await r.stop()


async def test_kernel_backend_an_event_during_its_crash_hotplug_read_is_not_lost(
    sysroot: Path,
) -> None:
    """The read of crash_hotplug after a load holds the kexec lock too: a DIMM onlined
    during it is skipped by the kernel ("kexec_trylock() failed"), and the line is
    drained inside our own load, where it counts as covered by the post-load check.
    So that check must come after the read."""
    hotplug_sysroot(sysroot)
    holder = TopologyHolder()
    kexec = HotplugDuringLoad(holder, during=set())

    def read_flag(_root: Path) -> bool:
        if holder.blocks == 0:
            holder.add_blocks(2)  # while the read holds the lock
        return True

    kb = KernelBackend(file_backend(sysroot, kexec), sysroot, read_hotplug=read_flag)
    r = reconciler(sysroot, kb, holder)
    await r.start()
    assert len(kexec.calls) == 2, "the update skipped during the read must be reloaded"
    r.event(EV)  # the DIMM's uevents
    await r.settle()
    assert len(kexec.calls) == 2
    assert r.store.current.covered_ranges[-1][1] == holder.ram_end
    await r.stop()


async def test_kernel_backend_extra_load_is_made_once_then_the_next_burst_loads(
    sysroot: Path,
) -> None:
    from kdumpd.daemon.backends.base import LoadRequest
    from kdumpd.daemon.statefile import key_digest

    hotplug_sysroot(sysroot)
    holder = TopologyHolder()
    kexec = HotplugDuringLoad(holder, during={1, 2})  # and again during the extra load
    kb = KernelBackend(file_backend(sysroot, kexec), sysroot, read_hotplug=lambda _p: True)

    def read_key() -> str:
        return key_digest(holder(sysroot).image_key())

    req = LoadRequest(None, holder.current, 1, "start", force_load=True, read_key=read_key)
    res = await kb.apply(req)
    assert len(kexec.calls) == 2 and res.load_count == 2, "one extra load, never a loop"
    assert kb.race.suspect
    # the burst of those events: not trusted to the kernel's in-place update
    req2 = LoadRequest(None, holder.current, 2, "1 events (quiet)", read_key=read_key)
    res = await kb.apply(req2)
    assert res.loaded and len(kexec.calls) == 3 and not kb.race.suspect
    res = await kb.apply(req2)
    assert not res.loaded and len(kexec.calls) == 3
    # without a key reader (no topology) nothing is compared
    kexec.during = {4}
    await kb.apply(LoadRequest(None, None, 3, "reload", force_load=True))
    assert len(kexec.calls) == 4


async def test_refusals_before_a_syscall_are_typed(sysroot: Path, tmp_path: Path) -> None:
    """A back-end that refuses before any syscall says so with its own error class."""
    from kdumpd.daemon.backends.base import LoadRefused, LoadRequest, NothingToRestore
    from kdumpd.daemon.backends.file import default_files

    with pytest.raises(LoadRefused, match="NUL or newline"):
        default_files(sysroot, cmdline="console=ttyS0\nroot=/dev/vda")
    dry = DryRunBackend(tmp_path / "state")
    request = LoadRequest(None, None, 1, "test")
    with pytest.raises(LoadRefused, match="no crash image model"):
        await dry.apply(request)
    with pytest.raises(NothingToRestore):
        await dry.restore(request)
    with pytest.raises(NothingToRestore):
        await file_backend(sysroot, ScriptedKexec()).restore(request)
