"""The ``kexec-tools`` back-end against a fake ``kexec`` on PATH.

The fake records every argv (one JSON line each), answers ``--version``/``--help``
(with or without ``--hotplug``), and plays the kernel's part on the sysroot: a load
sets ``kexec_crash_loaded`` to 1 (and ``crash_hotplug`` to 1 with ``--hotplug``); it
can fail with a message, free the image while failing, or hang.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from kdumpd.config import load_settings
from kdumpd.daemon.backends.base import LoadRequest
from kdumpd.daemon.backends.file import KexecFiles, default_files
from kdumpd.daemon.backends.kexectools import (
    KexecToolsBackend,
    KexecToolsError,
    check_kexec_args,
)
from kdumpd.daemon.backends.probe import make_backend, probe_backend
from kdumpd.daemon.reconciler import Reconciler
from kdumpd.daemon.state import ImageState
from kdumpd.events.event import HotplugEvent
from tests.unit.daemon_fakes import FIXTURE, TopologyHolder, reconciler

EV = HotplugEvent("online", "memory", "/devices/system/memory/memory512")

FAKE_KEXEC = r"""#!{python}
import json, os, sys, time
env = os.environ
args = sys.argv[1:]
if args == ["--version"]:
    print("kexec-tools 2.0.99-fake")
    sys.exit(0)
if args == ["--help"]:
    print("Usage: kexec [OPTION]... [kernel]")
    print(" -p, --load-panic        Load the new kernel for use on panic.")
    print(" -u, --unload            Unload the current kexec target kernel.")
    if env.get("FAKE_KEXEC_HOTPLUG") == "1":
        print("     --hotplug           Do in-kernel update of kexec segments on CPU/Memory")
    sys.exit(0)
with open(env["FAKE_KEXEC_LOG"], "a") as f:
    f.write(json.dumps(args) + "\n")
root = env["FAKE_KEXEC_SYSROOT"]
def put(rel, value):
    p = os.path.join(root, rel)
    if os.path.exists(os.path.dirname(p)):
        open(p, "w").write(value + "\n")
if env.get("FAKE_KEXEC_SLEEP"):
    time.sleep(float(env["FAKE_KEXEC_SLEEP"]))
if env.get("FAKE_KEXEC_FAIL"):
    if env.get("FAKE_KEXEC_FREES") == "1":
        put("sys/kernel/kexec_crash_loaded", "0")
    sys.stderr.write("Try gzip decompression.\n" + env["FAKE_KEXEC_FAIL"] + "\n")
    sys.exit(int(env.get("FAKE_KEXEC_RC", "1")))
if "-u" in args:
    put("sys/kernel/kexec_crash_loaded", "0")
    sys.exit(0)
put("sys/kernel/kexec_crash_loaded", "1")
hp = "1" if "--hotplug" in args else "0"
for d in ("sys/devices/system/cpu", "sys/devices/system/memory"):
    if os.path.exists(os.path.join(root, d, "crash_hotplug")):
        put(d + "/crash_hotplug", hp)
"""


class FakeKexec:
    def __init__(self, tmp: Path, sysroot: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        bindir = tmp / "bin"
        bindir.mkdir()
        script = bindir / "kexec"
        script.write_text(FAKE_KEXEC.replace("{python}", sys.executable))
        script.chmod(0o755)
        self.path = script
        self.log = tmp / "kexec.jsonl"
        self.mp = monkeypatch
        monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
        monkeypatch.setenv("FAKE_KEXEC_LOG", str(self.log))
        monkeypatch.setenv("FAKE_KEXEC_SYSROOT", str(sysroot))
        for k in ("FAKE_KEXEC_HOTPLUG", "FAKE_KEXEC_FAIL", "FAKE_KEXEC_FREES", "FAKE_KEXEC_SLEEP"):
            monkeypatch.delenv(k, raising=False)

    def hotplug(self, offered: bool) -> None:
        self.mp.setenv("FAKE_KEXEC_HOTPLUG", "1" if offered else "0")

    def fail(self, message: str, rc: int = 1, frees: bool = False) -> None:
        self.mp.setenv("FAKE_KEXEC_FAIL", message)
        self.mp.setenv("FAKE_KEXEC_RC", str(rc))
        self.mp.setenv("FAKE_KEXEC_FREES", "1" if frees else "0")

    def succeed(self) -> None:
        self.mp.delenv("FAKE_KEXEC_FAIL", raising=False)

    @property
    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def sysroot(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    rel = (root / "proc/sys/kernel/osrelease").read_text().strip()
    (root / "boot").mkdir()
    (root / f"boot/vmlinux-{rel}").write_bytes(b"\x7fELF fake kernel")
    (root / "var/lib/kdump").mkdir(parents=True)
    (root / f"var/lib/kdump/initrd.img-{rel}").write_bytes(b"fake initrd")
    (root / "proc/cmdline").write_text("root=/dev/vda1 ro crashkernel=512M quiet\n")
    (root / "sys/kernel/kexec_crash_loaded").write_text("0\n")
    for d in ("cpu", "memory"):
        (root / f"sys/devices/system/{d}/crash_hotplug").unlink(missing_ok=True)
    (root / "sys/kernel/crash_elfcorehdr_size").unlink(missing_ok=True)
    return root


def with_crash_hotplug(sysroot: Path) -> None:
    for d in ("cpu", "memory"):
        (sysroot / f"sys/devices/system/{d}/crash_hotplug").write_text("0\n")


@pytest.fixture
def fake(tmp_path: Path, sysroot: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKexec:
    return FakeKexec(tmp_path, sysroot, monkeypatch)


def files(sysroot: Path) -> KexecFiles:
    rel = (sysroot / "proc/sys/kernel/osrelease").read_text().strip()
    return default_files(sysroot, kernel=f"/boot/vmlinux-{rel}", append="nr_cpus=1")


async def started(sysroot: Path, b: KexecToolsBackend) -> tuple[Reconciler, TopologyHolder]:
    """A reconciler over ``b`` that has started and settled its first load."""
    holder = TopologyHolder()
    r = reconciler(sysroot, b, holder)
    await r.start()
    await r.settle()
    return r, holder


def loads(calls: list[list[str]]) -> list[list[str]]:
    return [c for c in calls if c and c[0] == "-p"]


async def test_one_kexec_p_per_burst_and_never_an_unload(sysroot: Path, fake: FakeKexec) -> None:
    fake.hotplug(False)
    b = KexecToolsBackend(files(sysroot), sysroot)
    r, holder = await started(sysroot, b)
    for n in (1, 2):
        holder.add_blocks(n)
        r.event(EV)
        await r.settle()
    calls = fake.calls
    assert len(loads(calls)) == 3 == r.store.current.loads
    assert all("-u" not in c and "--unload" not in c for c in calls), calls
    f = files(sysroot)
    first = calls[0]
    assert first[:2] == ["-p", f.kernel]
    assert f"--initrd={f.initrd}" in first and f"--append={f.cmdline}" in first
    assert "--hotplug" not in first  # the kernel has no crash hotplug here
    assert r.store.current.state == ImageState.LOADED
    assert r.store.current.backend == "kexec-tools"
    await r.stop()


async def test_hotplug_kernel_and_tool_load_once_and_the_kernel_updates(
    sysroot: Path, fake: FakeKexec
) -> None:
    with_crash_hotplug(sysroot)
    fake.hotplug(True)
    b = KexecToolsBackend(files(sysroot), sysroot)
    r, holder = await started(sysroot, b)
    holder.add_blocks(2)
    r.event(EV)
    await r.settle()
    calls = loads(fake.calls)
    assert len(calls) == 1 and calls[0][-1] == "--hotplug", calls
    assert (sysroot / "sys/devices/system/cpu/crash_hotplug").read_text().strip() == "1"
    assert b.hotplug_flag is True and b.updated_in_place
    assert r.store.current.loads == 1
    assert r.store.current.kernel_hotplug_support
    await r.stop()


async def test_crash_hotplug_reading_0_twice_after_our_load_makes_bursts_load(
    sysroot: Path, fake: FakeKexec
) -> None:
    """One 0 may be crash_hotplug's own failed trylock: read again after a pause; 0
    twice and the kernel may not update the image, so the next burst loads."""
    with_crash_hotplug(sysroot)
    fake.hotplug(True)
    reads = [False, False, False, True]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    b = KexecToolsBackend(
        files(sysroot),
        sysroot,
        read_hotplug=lambda _root: reads.pop(0),
        hotplug_reread_delay=0.25,
        sleep=sleep,
    )
    r, holder = await started(sysroot, b)
    assert slept == [0.25] and b.hotplug_flag is False and not b.own_hotplug_load
    assert not r.store.current.kernel_hotplug_support
    holder.add_blocks(2)
    r.event(EV)
    await r.settle()
    assert len(loads(fake.calls)) == 2 and b.hotplug_flag is True and b.own_hotplug_load
    assert r.store.current.kernel_hotplug_support and slept == [0.25, 0.25]
    holder.add_blocks(1)
    r.event(EV)
    await r.settle()
    assert len(loads(fake.calls)) == 2 and not reads
    await r.stop()


async def test_no_hotplug_option_when_the_tool_lacks_it(sysroot: Path, fake: FakeKexec) -> None:
    with_crash_hotplug(sysroot)  # the kernel could, kexec-tools 2.0.25 cannot
    fake.hotplug(False)
    b = KexecToolsBackend(files(sysroot), sysroot)
    r, holder = await started(sysroot, b)
    holder.add_blocks(1)
    r.event(EV)
    await r.settle()
    calls = loads(fake.calls)
    assert len(calls) == 2 and not any("--hotplug" in c for c in calls), calls
    assert not b.updated_in_place
    await r.stop()


async def test_no_hotplug_option_when_the_kernel_lacks_crash_hotplug(
    sysroot: Path, fake: FakeKexec
) -> None:
    fake.hotplug(True)
    b = KexecToolsBackend(files(sysroot), sysroot)
    req = LoadRequest(image=None, topology=None, generation=1, trigger="start")
    await b.apply(req)
    await b.apply(req)
    calls = loads(fake.calls)
    assert len(calls) == 2 and not any("--hotplug" in c for c in calls)


def test_kexec_args_from_sysconfig_and_kdump_tools(sysroot: Path, fake: FakeKexec) -> None:
    s = load_settings(None, {"sysroot": str(sysroot), "state_dir": str(sysroot / "run")}, env={})
    (sysroot / "etc/default").mkdir(parents=True, exist_ok=True)
    (sysroot / "etc/default/kdump-tools").write_text('KDUMP_KEXEC_ARGS="-d --noefi"\n')
    b = make_backend("kexec-tools", s)
    assert isinstance(b, KexecToolsBackend)
    assert b.kexec_args == ("-d", "--noefi")
    (sysroot / "etc/sysconfig").mkdir(parents=True, exist_ok=True)
    (sysroot / "etc/sysconfig/kdump").write_text('KEXEC_ARGS="--dt-no-old-root"\n')
    b = make_backend("kexec-tools", s)
    assert isinstance(b, KexecToolsBackend)
    assert b.kexec_args == ("--dt-no-old-root",)


async def test_kexec_args_reach_the_command_line(sysroot: Path, fake: FakeKexec) -> None:
    with_crash_hotplug(sysroot)
    fake.hotplug(True)
    b = KexecToolsBackend(files(sysroot), sysroot, kexec_args=("-d", "--noefi"))
    await b.apply(LoadRequest(image=None, topology=None, generation=1, trigger="start"))
    (call,) = loads(fake.calls)
    assert call[-3:] == ["-d", "--noefi", "--hotplug"]
    assert "kexec_args" in b.input_digests()


@pytest.mark.parametrize("arg", ["-u", "--unload", "-e", "--exec", "-l", "--load", "-f"])
def test_kexec_args_that_unload_or_exec_are_refused(arg: str) -> None:
    with pytest.raises(KexecToolsError, match="refused"):
        check_kexec_args(("-d", arg))


async def test_failure_keeps_the_old_image_and_says_why(
    sysroot: Path, fake: FakeKexec, caplog: pytest.LogCaptureFixture
) -> None:
    fake.hotplug(False)
    b = KexecToolsBackend(files(sysroot), sysroot)
    r, holder = await started(sysroot, b)
    fake.fail("Could not find a free area of memory of 0x2a000 bytes...", rc=3)
    holder.add_blocks(1)
    r.event(EV)
    await r.settle()
    st = r.store.current
    assert st.state == ImageState.DEGRADED and st.stale
    assert st.last_error == (
        "kexec -p failed (exit status 3): Could not find a free area of memory of 0x2a000 bytes..."
    )
    assert "\n" not in st.last_error
    assert b.is_loaded()  # the old image is still there; no restore was attempted
    assert len(loads(fake.calls)) == 2
    assert any("still loaded; not restoring" in m for m in caplog.messages)
    await r.stop()


async def test_failure_that_freed_the_image_is_reported_as_no_crash_kernel(
    sysroot: Path, fake: FakeKexec, caplog: pytest.LogCaptureFixture
) -> None:
    fake.hotplug(False)
    b = KexecToolsBackend(files(sysroot), sysroot)
    r, holder = await started(sysroot, b)
    fake.fail("kexec_load failed: Cannot allocate memory", frees=True)
    holder.add_blocks(1)
    r.event(EV)
    await r.settle()
    st = r.store.current
    assert not b.is_loaded()
    assert st.state == ImageState.FAILED  # the restore (same failure) did not load either
    assert "Cannot allocate memory" in st.last_error
    assert any("NO CRASH KERNEL IS LOADED" in m for m in caplog.messages)
    fake.succeed()
    req = LoadRequest(image=None, topology=None, generation=9, trigger="retry")
    await b.restore(req)  # the last good invocation
    assert b.is_loaded()
    await r.stop()


async def test_a_hanging_kexec_is_killed_after_the_timeout(
    sysroot: Path, fake: FakeKexec, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = KexecToolsBackend(files(sysroot), sysroot, timeout=0.5)
    await b._detect()
    monkeypatch.setenv("FAKE_KEXEC_SLEEP", "30")
    t0 = time.monotonic()
    with pytest.raises(KexecToolsError, match="no answer after"):
        await b.apply(LoadRequest(image=None, topology=None, generation=1, trigger="start"))
    assert time.monotonic() - t0 < 10


async def test_the_loop_keeps_running_during_a_load(
    sysroot: Path, fake: FakeKexec, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = KexecToolsBackend(files(sysroot), sysroot)
    await b._detect()
    monkeypatch.setenv("FAKE_KEXEC_SLEEP", "0.6")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    t = asyncio.get_running_loop().create_task(tick())
    await b.apply(LoadRequest(image=None, topology=None, generation=1, trigger="start"))
    t.cancel()
    assert ticks >= 3


def test_auto_picks_kexec_tools_without_kexec_file_load(sysroot: Path) -> None:
    (sysroot / "sys/kernel/kexec_crash_size").write_text("536870912\n")

    def missing(machine: str) -> bool:
        return False

    name, why = probe_backend(
        sysroot, euid=0, machine="ppc64le", file_load=missing, kexec_binary=lambda: "/sbin/kexec"
    )
    assert name == "kexec-tools" and "no kexec_file_load" in why and "/sbin/kexec" in why
    name, why = probe_backend(
        sysroot, euid=0, machine="ppc64le", file_load=missing, kexec_binary=lambda: None
    )
    assert name == "dry-run" and "no kexec binary" in why
    name, _ = probe_backend(sysroot, euid=0, machine="ppc64le", file_load=lambda m: True)
    assert name == "file"
    # not probed (a kexec_load_limit_reboot is set): no own loader for ppc64le, so the
    # distribution's kexec, which loads with or without kexec_file_load
    name, why = probe_backend(
        sysroot,
        euid=0,
        machine="ppc64le",
        file_load=lambda m: None,
        kexec_binary=lambda: "/sbin/kexec",
    )
    assert name == "kexec-tools" and "not probed" in why
