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
from kdumpd.core.topology import Topology
from kdumpd.daemon.backends.file import KexecFiles, default_files
from kdumpd.daemon.backends.kexectools import KexecToolsBackend
from kdumpd.daemon.reconciler import Reconciler
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


async def started_after_hot_add(
    tmp_path: Path, fake: FakeKexec, *, hotplug: bool
) -> tuple[Reconciler, KexecToolsBackend, TopologyHolder]:
    """The daemon started on the 6.12 guest's tree after its hot-add (2 DIMMs above
    linux,memory-limit), with or without ``--hotplug``; the back-end reads the same
    (movable) topology as the reconciler."""
    root = ppc_sysroot(tmp_path, "guest-ppc64le-6.12-after")
    fake.hotplug(hotplug)
    holder = TopologyHolder(read_topology(root))
    b = KexecToolsBackend(files(root), root, read_topology=holder)
    r = reconciler(root, b, holder)
    await r.start()
    await r.settle()
    return r, b, holder


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
    r, _, holder = await started_after_hot_add(tmp_path, fake, hotplug=True)
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


@pytest.mark.parametrize("when", ["before the load", "during the load"])
async def test_ram_that_arrives_around_the_load_counts_as_left_out(
    tmp_path: Path, fake: FakeKexec, when: str
) -> None:
    """The request's topology was read before kexec-tools ran: a block arriving after
    that read (before or during the load) must not vanish from the reason, and the
    next no-load pass must not take the changed RAM for the kernel's rebuild."""
    root = ppc_sysroot(tmp_path, "guest-ppc64le-6.12-after")
    fake.hotplug(True)
    holder = TopologyHolder(read_topology(root))
    b = KexecToolsBackend(files(root), root, read_topology=holder)
    r = reconciler(root, b, holder)
    if when == "before the load":
        load = b.race.load

        async def late_block(*args: object, **kw: object) -> object:
            holder.set_blocks(1)
            return await load(*args, **kw)  # type: ignore[arg-type]

        b.race.load = late_block  # type: ignore[method-assign]
    else:
        run = b._run

        async def block_during(f: KexecFiles) -> object:
            res = await run(f)
            holder.set_blocks(1)
            return res

        b._run = block_during  # type: ignore[method-assign]
    await r.start()
    await r.settle()
    s = r.store.current
    assert "640 MiB" in s.stale_reason, s.stale_reason  # 2 DIMMs + the 128 MiB block
    assert s.stale
    r.request("again")
    await r.settle()
    assert "640 MiB" in r.store.current.stale_reason


async def test_a_restart_adopting_the_clipped_image_says_it_again(
    tmp_path: Path, fake: FakeKexec
) -> None:
    root = ppc_sysroot(tmp_path, "guest-ppc64le-6.12-after")
    fake.hotplug(True)
    holder = TopologyHolder(read_topology(root))
    r = reconciler(root, KexecToolsBackend(files(root), root, read_topology=holder), holder)
    await r.start()
    await r.settle()
    first = r.store.current.stale_reason
    assert "512 MiB" in first
    await r.stop()
    r2 = reconciler(root, KexecToolsBackend(files(root), root, read_topology=holder), holder)
    await r2.start()
    await r2.settle()
    assert len(loads(fake.calls)) == 1  # adopted, not loaded again
    assert r2.store.current.stale and r2.store.current.stale_reason == first
    await r2.stop()


async def test_kexec_file_syscall_images_are_not_clipped(tmp_path: Path, fake: FakeKexec) -> None:
    """``-s`` in KEXEC_ARGS: kexec_file_load, the kernel builds the elfcorehdr."""
    root = ppc_sysroot(tmp_path, "guest-ppc64le-6.12-after")
    fake.hotplug(False)
    b = KexecToolsBackend(files(root), root, kexec_args=["-s"])
    r = reconciler(root, b, TopologyHolder(read_topology(root)))
    await r.start()
    await r.settle()
    assert "-s" in loads(fake.calls)[0]
    assert r.store.current.stale_reason == ""
    await r.stop()


async def test_an_unreadable_topology_after_the_load_is_said_not_ignored(
    tmp_path: Path, fake: FakeKexec
) -> None:
    root = ppc_sysroot(tmp_path, "guest-ppc64le-6.12-after")
    fake.hotplug(False)

    def unreadable(_: Path) -> Topology:
        raise InputError("/proc/iomem", "permission denied")

    b = KexecToolsBackend(files(root), root, read_topology=unreadable)
    r = reconciler(root, b, TopologyHolder(read_topology(root)))
    await r.start()
    await r.settle()
    reason = r.store.current.stale_reason
    assert (
        reason.startswith("cannot tell what RAM kexec-tools left out") and "/proc/iomem" in reason
    )
    assert "\n" not in reason
    await r.stop()


async def test_a_failed_load_leaves_the_last_reason(tmp_path: Path, fake: FakeKexec) -> None:
    r, b, holder = await started_after_hot_add(tmp_path, fake, hotplug=False)
    fake.fail("Could not find a free area of memory")
    holder.set_blocks(1)
    r.event(EV)
    await r.settle()
    assert "512 MiB" in b.clip.reason  # the old image (still loaded) lacks what it lacked
    await r.stop()


def test_a_malformed_crashkernel_cell_is_an_error_not_a_missing_reservation(
    tmp_path: Path,
) -> None:
    """Read like linux,memory-limit: before, a bad length silently dropped the
    reservation, and kdumpd's elfcorehdr then described the reserved memory as RAM."""
    root = ppc_sysroot(tmp_path, "guest-ppc64le-6.12-after")
    cell = root / "sys/firmware/devicetree/base/chosen/linux,crashkernel-base"
    cell.write_bytes(b"\x00\x20\x00")
    with pytest.raises(InputError) as err:
        read_topology(root)
    assert "linux,crashkernel-base" in str(err.value) and "3 bytes" in str(err.value)
