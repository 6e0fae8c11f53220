"""kexec-tools' ppc64 loader stops at ``/chosen/linux,memory-limit``: the back-end says
which RAM the image it loaded lacks, and the state is ``stale`` until that is no more.

On the real trees: Debian's 6.12 ppc64el guest publishes 0x80000000 (the end of boot
memory) and has two 256 MiB DIMMs above it after the hot-add; the 6.1 guest publishes
0 (no limit).  The fake ``kexec`` of test_kexectools plays the loader.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kdumpd.core.errors import InputError
from kdumpd.daemon.backends.file import KexecFiles, default_files
from kdumpd.daemon.backends.kexectools import KexecToolsBackend
from kdumpd.events.event import HotplugEvent
from kdumpd.system.devicetree import MEMORY_LIMIT, read_memory_limit
from kdumpd.system.sysroot import Sysroot
from kdumpd.system.topologyreader import read_topology
from tests.unit.daemon_fakes import TopologyHolder, reconciler
from tests.unit.test_kexectools import FakeKexec, loads

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EV = HotplugEvent("online", "memory", "/devices/system/memory/memory40")


def ppc_sysroot(tmp_path: Path, name: str) -> Path:
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / name, root, dirs_exist_ok=True)
    (root / "boot").mkdir()
    (root / "boot/vmlinux").write_bytes(b"\x7fELF fake kernel")
    (root / "boot/initrd.img").write_bytes(b"fake initrd")
    (root / "proc/cmdline").write_text("root=/dev/vda ro crashkernel=512M\n")
    (root / "sys/kernel/kexec_crash_loaded").write_text("0\n")
    return root


def files(root: Path) -> KexecFiles:
    return default_files(root, kernel="/boot/vmlinux", initrd="/boot/initrd.img", append="")


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKexec:
    (tmp_path / "root").mkdir(exist_ok=True)
    return FakeKexec(tmp_path, tmp_path / "root", monkeypatch)


def test_memory_limit_read_from_the_real_trees() -> None:
    assert read_memory_limit(Sysroot(FIXTURES / "guest-ppc64le-6.12-after")) == 0x80000000
    assert read_memory_limit(Sysroot(FIXTURES / "guest-ppc64le-6.1-after")) == 0
    assert read_memory_limit(Sysroot(FIXTURES / "guest-6.12-after")) is None  # x86


def test_a_malformed_memory_limit_is_one_line_naming_the_file(tmp_path: Path) -> None:
    prop = tmp_path / MEMORY_LIMIT.lstrip("/")
    prop.parent.mkdir(parents=True)
    prop.write_bytes(b"\x00\x80\x00")
    with pytest.raises(InputError) as err:
        read_memory_limit(Sysroot(tmp_path))
    assert MEMORY_LIMIT in str(err.value) and "\n" not in str(err.value)


async def test_6_12_load_after_a_hot_add_is_stale_and_names_the_ram_left_out(
    tmp_path: Path, fake: FakeKexec
) -> None:
    root = ppc_sysroot(tmp_path, "guest-ppc64le-6.12-after")
    fake.hotplug(False)  # bookworm's kexec-tools: every burst loads, each one clipped
    b = KexecToolsBackend(files(root), root)
    r = reconciler(root, b, TopologyHolder(read_topology(root)))
    await r.start()
    await r.settle()
    s = r.store.current
    assert len(loads(fake.calls)) == 1
    assert s.stale, s
    assert "512 MiB of RAM (0x80000000-0x8fffffff and 1 more)" in s.stale_reason
    assert "linux,memory-limit 0x80000000" in s.stale_reason
    await r.stop()


async def test_no_limit_on_6_1_leaves_nothing_out(tmp_path: Path, fake: FakeKexec) -> None:
    root = ppc_sysroot(tmp_path, "guest-ppc64le-6.1-after")
    fake.hotplug(False)
    b = KexecToolsBackend(files(root), root)
    r = reconciler(root, b, TopologyHolder(read_topology(root)))
    await r.start()
    await r.settle()
    assert len(loads(fake.calls)) == 1
    assert not r.store.current.stale and r.store.current.stale_reason == ""
    await r.stop()


async def test_the_kernels_in_place_rebuild_after_a_memory_change_clears_it(
    tmp_path: Path, fake: FakeKexec
) -> None:
    """Loaded with --hotplug while the DIMMs were already there (a daemon restart after
    the hot-add): the load lacks them; the next memory event makes the kernel rebuild
    the whole elfcorehdr from its own memory list, and the reason goes."""
    root = ppc_sysroot(tmp_path, "guest-ppc64le-6.12-after")
    fake.hotplug(True)
    b = KexecToolsBackend(files(root), root)
    holder = TopologyHolder(read_topology(root))
    r = reconciler(root, b, holder)
    await r.start()
    await r.settle()
    assert loads(fake.calls)[0][-1] == "--hotplug"
    assert r.store.current.stale and "512 MiB" in r.store.current.stale_reason
    holder.set_blocks(1)
    r.event(EV)
    await r.settle()
    assert len(loads(fake.calls)) == 1  # the kernel updated in place
    assert r.store.current.stale_reason == "" and not r.store.current.stale
    await r.stop()


async def test_a_kernel_log_reason_is_not_cleared_by_an_in_place_update(
    tmp_path: Path, fake: FakeKexec
) -> None:
    """Only the back-end's own reason moves without a load; another one (set by the
    kernel-log watcher) waits for the load it asks for."""
    root = ppc_sysroot(tmp_path, "guest-ppc64le-6.1-after")
    (root / "sys/firmware/devicetree/base/chosen/linux,memory-limit").write_bytes(bytes(8))
    for d in ("cpu", "memory"):
        (root / f"sys/devices/system/{d}/crash_hotplug").write_text("0\n")
    fake.hotplug(True)
    b = KexecToolsBackend(files(root), root)
    holder = TopologyHolder(read_topology(root))
    r = reconciler(root, b, holder)
    await r.start()
    await r.settle()
    r.store.update(stale=True, stale_reason="the kernel skipped an update")
    holder.set_blocks(1)
    r.event(EV)
    await r.settle()
    assert r.store.current.stale_reason == "the kernel skipped an update"
    await r.stop()
