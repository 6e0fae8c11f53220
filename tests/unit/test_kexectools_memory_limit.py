"""kexec-tools' ppc64 loader stops at ``/chosen/linux,memory-limit``: the back-end says
which RAM the image it loaded lacks, and the state is ``stale`` until that is no more.

On the real trees: Debian's 6.12 ppc64el guest publishes 0x80000000 (the end of boot
memory) and has two 256 MiB DIMMs above it after the hot-add; the 6.1 guest publishes
0 (no limit).  The fake ``kexec`` of test_kexectools plays the loader.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from kdumpd.core.errors import InputError
from kdumpd.core.topology import Resource
from kdumpd.daemon.backends.file import KexecFiles, default_files
from kdumpd.daemon.backends.kexectools import KexecToolsBackend
from kdumpd.daemon.control import Operations
from kdumpd.daemon.reconciler import Reconciler
from kdumpd.daemon.state import ImageState
from kdumpd.events.event import HotplugEvent
from kdumpd.system.devicetree import MEMORY_LIMIT, read_memory_limit
from kdumpd.system.sysroot import Sysroot
from kdumpd.system.topologyreader import read_topology
from tests.unit.daemon_fakes import BLOCK, HOTPLUG_BASE, TopologyHolder, reconciler
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


class Machine:
    """A ppc64le guest tree whose RAM can grow: the reconciler's topology (the holder)
    and the tree's /proc/iomem (what the back-end reads after a load) move together."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.holder = TopologyHolder(read_topology(root))
        self.iomem = (root / "proc/iomem").read_text()

    def add_blocks(self, n: int) -> None:
        self.holder.set_blocks(self.holder.blocks + n)
        end = HOTPLUG_BASE + self.holder.blocks * BLOCK - 1
        extra = f"{HOTPLUG_BASE:x}-{end:x} : System RAM\n" if self.holder.blocks else ""
        (self.root / "proc/iomem").write_text(self.iomem + extra)


async def started(
    tmp_path: Path, fake: FakeKexec, *, hotplug: bool, tree: str = "guest-ppc64le-6.12-after"
) -> tuple[Reconciler, KexecToolsBackend, Machine]:
    """The daemon started on a guest's tree after its hot-add (on 6.12: 2 DIMMs above
    linux,memory-limit), with or without ``--hotplug``."""
    root = ppc_sysroot(tmp_path, tree)
    fake.hotplug(hotplug)
    m = Machine(root)
    b = KexecToolsBackend(files(root), root)
    r = reconciler(root, b, m.holder)
    await r.start()
    await r.settle()
    return r, b, m


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
    r, _, _ = await started(tmp_path, fake, hotplug=False)  # bookworm's kexec-tools
    s = r.store.current
    assert len(loads(fake.calls)) == 1
    assert s.stale, s
    assert "512 MiB of RAM (0x80000000-0x8fffffff and 1 more)" in s.stale_reason
    assert "linux,memory-limit 0x80000000" in s.stale_reason
    await r.stop()


async def test_no_limit_on_6_1_leaves_nothing_out(tmp_path: Path, fake: FakeKexec) -> None:
    r, _, _ = await started(tmp_path, fake, hotplug=False, tree="guest-ppc64le-6.1-after")
    assert len(loads(fake.calls)) == 1
    assert not r.store.current.stale and r.store.current.stale_reason == ""
    await r.stop()


async def test_the_kernels_in_place_rebuild_after_a_memory_change_clears_it(
    tmp_path: Path, fake: FakeKexec
) -> None:
    """Loaded with --hotplug while the DIMMs were already there (a daemon restart after
    the hot-add): the load lacks them; the next memory event makes the kernel rebuild
    the whole elfcorehdr from its own memory list, and the reason goes."""
    r, _, m = await started(tmp_path, fake, hotplug=True)
    assert loads(fake.calls)[0][-1] == "--hotplug"
    assert r.store.current.stale and "512 MiB" in r.store.current.stale_reason
    m.add_blocks(1)
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
    for d in ("cpu", "memory"):
        (root / f"sys/devices/system/{d}/crash_hotplug").write_text("0\n")
    fake.hotplug(True)
    m = Machine(root)
    r = reconciler(root, KexecToolsBackend(files(root), root), m.holder)
    await r.start()
    await r.settle()
    r.store.update(stale=True, stale_reason="the kernel skipped an update")
    m.add_blocks(1)
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
    m = Machine(root)
    b = KexecToolsBackend(files(root), root)
    r = reconciler(root, b, m.holder)
    if when == "before the load":
        load = b.race.load

        async def late_block(*args: object, **kw: object) -> object:
            m.add_blocks(1)
            return await load(*args, **kw)  # type: ignore[arg-type]

        b.race.load = late_block  # type: ignore[method-assign]
    else:
        run = b._run

        async def block_during(f: KexecFiles) -> object:
            res = await run(f)
            if not m.holder.blocks:  # once: during the first load
                m.add_blocks(1)
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
    r, _, m = await started(tmp_path, fake, hotplug=True)
    first = r.store.current.stale_reason
    assert "512 MiB" in first
    await r.stop()
    r2 = reconciler(m.root, KexecToolsBackend(files(m.root), m.root), m.holder)
    await r2.start()
    await r2.settle()
    assert len(loads(fake.calls)) == 1  # adopted, not loaded again
    assert r2.store.current.stale and r2.store.current.stale_reason == first
    m.add_blocks(1)  # and the kernel's rebuild still ends it
    r2.event(EV)
    await r2.settle()
    assert len(loads(fake.calls)) == 1 and r2.store.current.stale_reason == ""
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


async def test_the_clip_reads_no_file_that_takes_the_kexec_lock(
    tmp_path: Path, fake: FakeKexec
) -> None:
    """A whole snapshot would read kexec_crash_size (kexec lock: the kernel may skip an
    in-place update meanwhile); the clip reads /proc/iomem and /chosen only."""
    root = ppc_sysroot(tmp_path, "guest-ppc64le-6.12-after")
    m = Machine(root)  # the reconciler's snapshot, read before
    (root / "sys/kernel/kexec_crash_size").unlink()
    (root / "sys/kernel/kexec_crash_size").mkdir()  # reading it now would be an error
    fake.hotplug(True)
    r = reconciler(root, KexecToolsBackend(files(root), root), m.holder)
    await r.start()
    await r.settle()
    assert r.store.current.stale_reason.startswith("kexec-tools left 512 MiB")
    await r.stop()


@pytest.mark.parametrize(
    "error", [InputError("/proc/iomem", "permission denied"), ValueError("boom")]
)
async def test_an_unreadable_iomem_after_the_load_is_said_not_a_load_failure(
    tmp_path: Path, fake: FakeKexec, error: Exception
) -> None:
    root = ppc_sysroot(tmp_path, "guest-ppc64le-6.12-after")
    fake.hotplug(True)
    m = Machine(root)
    b = KexecToolsBackend(files(root), root)

    def unreadable() -> tuple[Resource, ...]:
        raise error

    b.clip.read_iomem = unreadable
    r = reconciler(root, b, m.holder)
    await r.start()
    await r.settle()
    s = r.store.current
    assert s.state == ImageState.LOADED and s.load_failures == 0 and s.last_error == ""
    assert s.stale_reason.startswith("cannot tell what RAM kexec-tools left out")
    assert str(error).split(":")[0] in s.stale_reason and "\n" not in s.stale_reason
    t = m.holder.current
    m.holder.current = dataclasses.replace(t, dt_cpus=t.dt_cpus[:1])  # a CPU goes
    r.event(HotplugEvent("remove", "cpu", "/devices/system/cpu/cpu2"))
    await r.settle()
    assert r.store.current.generation == 2  # applied in place, without a load
    assert r.store.current.stale_reason.startswith("cannot tell")  # no elfcorehdr rebuilt
    m.add_blocks(1)  # a memory change does
    r.event(EV)
    await r.settle()
    assert r.store.current.stale_reason == "" and len(loads(fake.calls)) == 1
    await r.stop()


async def test_a_failed_load_keeps_the_loaded_images_reason(
    tmp_path: Path, fake: FakeKexec
) -> None:
    r, _, m = await started(tmp_path, fake, hotplug=False)
    before = r.store.current.stale_reason
    assert "512 MiB" in before
    fake.fail("Could not find a free area of memory")
    m.add_blocks(1)
    r.event(EV)
    await r.settle()
    s = r.store.current
    assert s.state == ImageState.DEGRADED and "free area" in s.last_error
    assert s.stale and s.stale_reason == before  # the old image, still loaded, lacks that
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


async def test_an_unload_on_request_drops_the_reason_with_the_image(
    tmp_path: Path, fake: FakeKexec
) -> None:
    r, b, _ = await started(tmp_path, fake, hotplug=False)
    assert "512 MiB" in r.store.current.stale_reason
    await Operations(r).unload()
    s = r.store.current
    assert s.state == ImageState.UNLOADED and s.stale and s.stale_reason == ""
    assert b.clip.reason == ""
    await r.stop()
