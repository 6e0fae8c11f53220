"""Backends and the fault policy, with scripted syscall objects (no monkeypatching)."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kdumpd.daemon.backends.dryrun import DryRunBackend
from kdumpd.daemon.backends.file import FileBackend, crash_cmdline, default_files
from kdumpd.daemon.backends.kernel import KernelBackend
from kdumpd.daemon.backends.probe import probe_backend
from kdumpd.daemon.reconciler import Reconciler
from kdumpd.daemon.state import ImageState, StateStore
from kdumpd.events.event import HotplugEvent
from kdumpd.system.kexec import (
    KEXEC_FILE_NO_INITRAMFS,
    KEXEC_FILE_ON_CRASH,
    KEXEC_FILE_UNLOAD,
)
from tests.unit.daemon_fakes import FIXTURE, ScriptedKexec, TopologyHolder, no_sleep

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


def reconciler(sysroot: Path, backend: object, holder: TopologyHolder, **kw: object) -> Reconciler:
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


def test_crash_cmdline_like_kdump_utils() -> None:
    assert (
        crash_cmdline("BOOT_IMAGE=/v root=/dev/sda crashkernel=1G-:256M nr_cpus=8 quiet")
        == "root=/dev/sda quiet irqpoll nr_cpus=1 reset_devices"
    )


def test_default_files_resolve_below_sysroot(sysroot: Path) -> None:
    f = default_files(sysroot)
    assert f.kernel.startswith(str(sysroot / "boot/vmlinuz-"))
    assert f.initrd is not None and "/var/lib/kdump/initrd.img-" in f.initrd
    assert "crashkernel" not in f.cmdline and f.cmdline.endswith("reset_devices")


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
    assert kexec.calls[0][0].endswith(b"irqpoll nr_cpus=1 reset_devices")
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


async def test_eperm_on_kernel_backend_switches_to_file(sysroot: Path) -> None:
    kexec = ScriptedKexec([errno.EPERM])
    kb = KernelBackend(file_backend(sysroot, kexec), sysroot, sleep=no_sleep)
    fallback_kexec = ScriptedKexec()
    r = reconciler(
        sysroot,
        kb,
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
    assert r._retry_handle is not None  # a retry is scheduled
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


async def test_kernel_backend_verifies_instead_of_reloading(sysroot: Path) -> None:
    kexec = ScriptedKexec()
    (sysroot / "sys/kernel/kexec_crash_loaded").write_text("1\n")
    mem = sysroot / "sys/devices/system/memory/crash_hotplug"
    cpu = sysroot / "sys/devices/system/cpu/crash_hotplug"
    mem.write_text("1\n")
    cpu.write_text("1\n")
    reads: list[float] = []

    async def sleep(d: float) -> None:  # the kexec lock is released after 2 retries
        reads.append(d)
        if len(reads) == 2:
            mem.write_text("1\n")

    kb = KernelBackend(file_backend(sysroot, kexec), sysroot, sleep=sleep)
    holder = TopologyHolder()
    r = reconciler(sysroot, kb, holder)
    await r.start()
    assert len(kexec.calls) == 1  # the initial kexec_file_load
    mem.write_text("0\n")  # kexec lock busy: reads 0
    holder.add_blocks(8)
    r.event(EV)
    await r.settle()
    assert len(kexec.calls) == 1, "kernel backend must not reload on hotplug"
    assert len(reads) == 2
    s = r.store.current
    assert s.kernel_hotplug_support and s.generation == 2 and s.loads == 1
    assert s.covered_ranges[-1][1] == holder.ram_end
    await r.stop()


async def test_kernel_backend_reloads_when_image_not_hotplug_capable(sysroot: Path) -> None:
    kexec = ScriptedKexec()
    (sysroot / "sys/kernel/kexec_crash_loaded").write_text("1\n")
    (sysroot / "sys/devices/system/memory/crash_hotplug").write_text("0\n")
    kb = KernelBackend(file_backend(sysroot, kexec), sysroot, sleep=no_sleep, verify_attempts=3)
    holder = TopologyHolder()
    r = reconciler(sysroot, kb, holder)
    await r.start()
    holder.add_blocks(1)
    r.event(EV)
    await r.settle()
    assert len(kexec.calls) == 2
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
    assert probe_backend(sysroot, euid=0)[0] == "file"
    (sysroot / "sys/kernel/crash_elfcorehdr_size").write_text("917616\n")
    assert probe_backend(sysroot, euid=0)[0] == "kernel"
    (sysroot / "sys/kernel/kexec_crash_size").write_text("0\n")
    assert probe_backend(sysroot, euid=0)[0] == "dry-run"
