"""The ``segment`` back-end: prepared once per input set, one kexec_load per burst
with only the elfcorehdr and its digest changed; EPERM/EACCES fall back to ``file``;
``kdumpd segments`` writes what would be loaded."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kdumpd.arch.x86_64 import loader
from kdumpd.arch.x86_64.loader import KEXEC_ARCH_X86_64, X86ImageBuilder
from kdumpd.cli import main
from kdumpd.daemon import backends
from kdumpd.daemon.backends.file import FileBackend, default_files
from kdumpd.daemon.backends.probe import LOADERS, probe_backend
from kdumpd.daemon.backends.segment import SegmentBackend
from kdumpd.daemon.control import Operations
from kdumpd.daemon.reconciler import Reconciler
from kdumpd.daemon.state import ImageState
from kdumpd.system.kexec import KEXEC_ON_CRASH
from tests.unit.bzimage_support import bootable_sysroot, make_bzimage
from tests.unit.daemon_fakes import ScriptedKexec, TopologyHolder, reconciler
from tests.unit.purgatory_fake import FakePurgatory, fake_blob


@pytest.fixture
def sysroot(tmp_path: Path) -> Path:
    return bootable_sysroot(tmp_path)


def segment_backend(sysroot: Path, kexec: ScriptedKexec) -> SegmentBackend:
    return SegmentBackend(
        kexec,
        default_files(sysroot),
        sysroot,
        builder=X86ImageBuilder(FakePurgatory),
        purgatory=fake_blob(),
    )


async def test_one_kexec_load_per_burst_only_the_elfcorehdr_changes(sysroot: Path) -> None:
    kexec = ScriptedKexec()
    b = segment_backend(sysroot, kexec)
    holder = TopologyHolder()
    r = reconciler(sysroot, b, holder)
    await r.start()
    assert r.store.current.state == ImageState.LOADED and r.store.current.backend == "segment"
    prepared = b.prepared
    assert prepared is not None and len(kexec.loads) == 1
    entry, _segs, flags = kexec.loads[0]
    assert flags == KEXEC_ON_CRASH | KEXEC_ARCH_X86_64
    kinds = [str(s.kind) for s in prepared.image.plan.segments]
    assert kinds == ["elfcorehdr", "purgatory", "setup", "initrd", "kernel"]
    assert entry == prepared.image.plan.segments[1].mem
    holder.add_blocks(2)
    r.request("test burst")
    await r.settle()
    assert len(kexec.loads) == 2 and b.prepared is prepared  # prepared once
    (_, before, _), (entry2, after, flags2) = kexec.loads
    assert (entry2, flags2) == (entry, flags)
    assert [(m, z) for _, m, z in before] == [(m, z) for _, m, z in after]
    changed = [i for i, (x, y) in enumerate(zip(before, after, strict=True)) if x[0] != y[0]]
    assert changed == [0, 1]  # the elfcorehdr and the purgatory header (its digest)
    hdr = after[0][0]
    pur = after[1][0]
    assert (
        hashlib.sha256(hdr).digest() in pur
        and hashlib.sha256(before[0][0]).digest() in before[1][0]
    )
    assert struct.pack("<Q", holder.ram_end - 2 * (128 << 20) + 1) in hdr  # the new range
    await r.stop()


async def test_new_inputs_are_prepared_again(sysroot: Path) -> None:
    kexec = ScriptedKexec()
    b = segment_backend(sysroot, kexec)
    r = reconciler(sysroot, b, TopologyHolder())
    await r.start()
    first = b.prepared
    Path(b.files.kernel).write_bytes(make_bzimage(init_size=0x1800000))
    await Operations(r).reload()
    assert b.prepared is not first and len(kexec.loads) == 2
    assert kexec.loads[1][1][-1][2] == 0x1800000  # kernel memsz = the new init_size
    await r.stop()


@pytest.mark.parametrize("code", [errno.EPERM, errno.EACCES])
async def test_kexec_load_refused_falls_back_to_file(sysroot: Path, code: int) -> None:
    kexec = ScriptedKexec([code])
    fallback = ScriptedKexec()
    r = reconciler(
        sysroot,
        segment_backend(sysroot, kexec),
        TopologyHolder(),
        fallback_backend=lambda: FileBackend(fallback, default_files(sysroot), sysroot),
    )
    await r.start()
    s = r.store.current
    assert s.backend == "file" and s.state == ImageState.LOADED
    assert s.backend_reason == f"fallback: segment refused ({errno.errorcode[code]})"
    assert len(kexec.loads) == 1 and len(fallback.calls) == 1
    await r.stop()


async def test_a_list_that_does_not_fit_never_reaches_the_kernel(sysroot: Path) -> None:
    Path(default_files(sysroot).kernel).write_bytes(make_bzimage(init_size=0x20000000))
    kexec = ScriptedKexec()
    r = reconciler(sysroot, segment_backend(sysroot, kexec), TopologyHolder())
    await r.start()
    assert kexec.loads == []
    assert "too small" in r.store.current.last_error
    await r.stop()


def test_backend_table_is_the_one_list_of_names() -> None:
    from typing import get_args

    from kdumpd.config import BackendName

    assert get_args(BackendName) == ("auto", *backends.BACKEND_NAMES)
    assert set(backends.BACKEND_NAMES) == {"dry-run", *LOADERS}


def test_probe_picks_segment_when_kexec_load_is_allowed(
    sysroot: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdumpd.daemon.backends import probe

    (sysroot / "sys/kernel/kexec_crash_size").write_text("268435456\n")
    monkeypatch.setattr(probe, "segment_unavailable", lambda root, machine: None)
    assert probe_backend(sysroot, euid=0, file_load=lambda m: True)[0] == "segment"
    monkeypatch.undo()
    (sysroot / "sys/kernel/security").mkdir(parents=True)
    (sysroot / "sys/kernel/security/lockdown").write_text("none [integrity] confidentiality\n")
    name, why = probe_backend(sysroot, euid=0, file_load=lambda m: True, machine="x86_64")
    assert name == "file" and "lockdown" in why
    (sysroot / "sys/kernel/security/lockdown").write_text("[none] integrity confidentiality\n")
    (sysroot / "proc/sys/kernel/kexec_load_disabled").write_text("1\n")
    name, why = probe_backend(sysroot, euid=0, file_load=lambda m: True, machine="x86_64")
    assert name == "file" and "kexec_load_disabled" in why


def test_segments_command_writes_segments_and_manifest(
    sysroot: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(loader, "default_purgatory", FakePurgatory)
    blob = tmp_path / "purgatory.bin"
    blob.write_bytes(fake_blob())
    out = tmp_path / "out"
    rc = main(
        [
            "segments",
            "--sysroot",
            str(sysroot),
            "--purgatory",
            str(blob),
            "--max-cpus",
            "16",
            "--max-ranges",
            "64",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert capsys.readouterr().out.startswith("segments: 5 segments")
    man = json.loads((out / "manifest.json").read_text())
    assert man["flags"] == "0x3e0001"
    segs = man["segments"]
    assert [s["kind"] for s in segs] == ["elfcorehdr", "purgatory", "setup", "initrd", "kernel"]
    assert man["entry"] == segs[1]["mem"]
    for s in segs:
        data = (out / s["file"]).read_bytes()
        assert len(data) == s["bufsz"] <= s["memsz"] and s["memsz"] % 4096 == 0
        assert hashlib.sha256(data).hexdigest() == s["sha256"]
    setup = (out / segs[2]["file"]).read_bytes()
    hdr_addr = int(segs[0]["mem"], 16)
    assert setup[4096:].startswith(f"elfcorehdr={hdr_addr:#x} root=/dev/vda1 ro".encode())
    if shutil.which("readelf") is None:
        pytest.skip("binutils readelf not installed")
    text = subprocess.run(
        ["readelf", "-hlW", str(out / segs[0]["file"])], capture_output=True, text=True, check=True
    ).stdout
    assert "CORE (Core file)" in text and "Advanced Micro Devices X86-64" in text
    loads = [line.split() for line in text.splitlines() if line.strip().startswith("LOAD")]
    assert loads and all(int(f[3], 16) >= 1 << 20 for f in loads)  # no PT_LOAD below 1 MiB
    crash = (int(segs[-1]["mem"], 16), hdr_addr)
    assert not any(int(f[3], 16) <= crash[0] < int(f[3], 16) + int(f[5], 16) for f in loads)


class Touching(ScriptedKexec):
    """kexec_load that runs ``touch(n)`` inside load ``n`` (1-based): a file changes
    while the kernel copies it."""

    def __init__(self, touch: Callable[[int], None], errnos: list[int] | None = None) -> None:
        super().__init__(errnos)
        self.touch = touch

    def load(self, entry: int, segments: list[tuple[object, int, int]], flags: int) -> None:
        super().load(entry, segments, flags)
        if segments:
            self.touch(len(self.loads))


def replace_by_rename(path: Path, data: bytes) -> None:
    """What a package update does: a new file (new inode) renamed over the path."""
    tmp = path.with_name(path.name + ".dpkg-new")
    tmp.write_bytes(data)
    tmp.rename(path)


NEW_INITRD = b"\x1f\x8b" + b"new" * 30000


async def started_touching(
    sysroot: Path, touch: Callable[[Path, int], None]
) -> tuple[Reconciler, SegmentBackend, Touching, TopologyHolder, Path]:
    """A started reconciler over a segment back-end whose load ``n`` runs
    ``touch(initrd, n)``; also the initrd's path."""
    b = segment_backend(sysroot, ScriptedKexec())
    initrd = Path(b.files.initrd or "")
    kexec = Touching(lambda n: touch(initrd, n))
    b.syscalls = kexec
    holder = TopologyHolder()
    r = reconciler(sysroot, b, holder)
    await r.start()
    return r, b, kexec, holder, initrd


async def test_a_file_rewritten_during_the_load_is_loaded_again_at_once(sysroot: Path) -> None:
    """The initrd rewritten in place (same inode) while kexec_load copies it: the kernel
    may hold new bytes under the old digests, which the purgatory would refuse at a
    crash.  The same pass prepares the new bytes and loads once more."""
    r, b, kexec, holder, _ = await started_touching(
        sysroot, lambda initrd, n: initrd.write_bytes(NEW_INITRD) if n == 2 else None
    )
    first = b.prepared
    assert first is not None and r.store.current.state == ImageState.LOADED
    holder.add_blocks(1)
    r.request("burst")
    await r.settle()
    cur = r.store.current
    assert (cur.state, cur.load_failures, cur.last_error) == (ImageState.LOADED, 0, "")
    assert len(kexec.loads) == 3  # start, the burst, the burst once more
    assert b.prepared is not None and b.prepared is not first
    assert kexec.loads[-1][1][3][0] == NEW_INITRD  # the new initrd
    pur = kexec.loads[-1][1][1][0]
    assert hashlib.sha256(NEW_INITRD).digest() in pur  # under its own digest
    assert b.last_good is b.prepared
    await r.stop()


async def test_a_file_that_keeps_changing_during_loads_leaves_no_image_claimed(
    sysroot: Path,
) -> None:
    """Rewritten in place during the load and again during the one more load: the
    image is unloaded and the state says failed (never degraded/loaded for an image
    whose digests describe other bytes); the last good image maps the same, rewritten
    inode, so it is not restored either."""
    r, b, kexec, holder, _ = await started_touching(
        sysroot, lambda initrd, n: initrd.write_bytes(NEW_INITRD + bytes(n)) if n >= 2 else None
    )
    assert r.store.current.state == ImageState.LOADED
    holder.add_blocks(1)
    r.request("burst")
    await r.settle()
    cur = r.store.current
    assert cur.state == ImageState.FAILED and cur.load_failures == 1
    assert "no trustworthy crash image is loaded" in cur.last_error
    assert len(kexec.loads) == 4  # start, burst, once more, the unload
    assert kexec.loads[-1][1] == [] and kexec.loads[-1][2] == KEXEC_ON_CRASH
    assert not b.own_load
    await r.stop()


async def test_a_rename_replacement_during_the_load_is_no_failure(
    sysroot: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A package update renames a new initrd over the path during the load: the
    mapping still holds the old inode, so the loaded image is what the digests say.
    The pass succeeds; the next one prepares the new file."""
    r, b, kexec, holder, _ = await started_touching(
        sysroot, lambda initrd, n: replace_by_rename(initrd, NEW_INITRD) if n == 2 else None
    )
    first = b.prepared
    holder.add_blocks(1)
    caplog.set_level(logging.INFO, logger="kdumpd.daemon.backends.segment")
    r.request("burst")
    await r.settle()
    cur = r.store.current
    assert (cur.state, cur.load_failures, cur.last_error) == (ImageState.LOADED, 0, "")
    assert len(kexec.loads) == 2 and b.prepared is first and b.last_good is first
    assert "now names another file" in caplog.text
    holder.add_blocks(1)
    r.request("next burst")
    await r.settle()
    assert b.prepared is not first and kexec.loads[-1][1][3][0] == NEW_INITRD
    await r.stop()


async def test_restore_after_a_rename_replacement_loads_the_last_good_image(
    sysroot: Path,
) -> None:
    """The last good image maps the replaced inode by design: restoring it after the
    new file's load failed must load it, not fail the identity check."""
    r, b, kexec, holder, initrd = await started_touching(sysroot, lambda _initrd, _n: None)
    good = b.prepared
    assert good is not None and r.store.current.state == ImageState.LOADED
    replace_by_rename(initrd, NEW_INITRD)
    kexec.errnos = [errno.ENOMEM]  # the new input set fails in the kernel
    holder.add_blocks(1)
    r.request("burst")
    await r.settle()
    cur = r.store.current
    assert cur.state == ImageState.DEGRADED and "ENOMEM" in cur.last_error
    assert len(kexec.loads) == 3  # start, the failed load, the restore
    assert kexec.loads[-1][1][3][0] == bytes(good.image.plan.segments[3].buf)
    assert kexec.loads[-1][1][3][0] != NEW_INITRD
    await r.stop()


async def test_input_digests_name_the_purgatory_blob_actually_loaded(sysroot: Path) -> None:
    """Without a configured blob the back-end loads the architecture's built one; its
    digest is what the state records, not the digest of nothing."""
    from kdumpd.arch import purgatory_blob
    from kdumpd.core.errors import KdumpdError

    try:
        blob = purgatory_blob("x86_64")
    except KdumpdError:
        pytest.skip("the x86_64 purgatory is not built")
    kexec = ScriptedKexec()
    b = SegmentBackend(kexec, default_files(sysroot), sysroot)
    r = reconciler(sysroot, b, TopologyHolder())
    await r.start()
    assert r.store.current.state == ImageState.LOADED
    assert b.input_digests()["purgatory"] == hashlib.sha256(blob).hexdigest()
    assert r.loaded_inputs["purgatory"] == hashlib.sha256(blob).hexdigest()


TRUNCATE_AFTER_MAPPING = """
import asyncio, sys
from pathlib import Path
from kdumpd.daemon.backends import segment
from tests.unit.daemon_fakes import ScriptedKexec, TopologyHolder, reconciler
from tests.unit.test_segment_backend import segment_backend

root, victim = Path(sys.argv[1]), sys.argv[2]

class TruncatedAfterMapping(segment.MappedFile):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        if path.endswith(victim):
            Path(path).write_bytes(b"")  # truncated between mapping and hashing

segment.MappedFile = TruncatedAfterMapping  # type: ignore[misc]

async def main() -> None:
    kexec = ScriptedKexec()
    r = reconciler(root, segment_backend(root, kexec), TopologyHolder())
    await r.start()
    print(r.store.current.state, len(kexec.loads))
    print(r.store.current.last_error)
    await r.stop()

asyncio.run(main())
"""


@pytest.mark.parametrize("victim", ["vmlinuz", "initrd"])
def test_a_file_truncated_between_mapping_and_hashing_is_an_error_not_sigbus(
    sysroot: Path, victim: str
) -> None:
    """Touching a mapping past a truncated end raises SIGBUS, which kills the daemon:
    the digests and the header are read through the descriptor instead.  Run in a
    child process so that a SIGBUS fails this test instead of killing pytest."""
    rel = (sysroot / "proc/sys/kernel/osrelease").read_text().strip()
    name = f"vmlinuz-{rel}" if victim == "vmlinuz" else f"initrd.img-{rel}"
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.run(
        [sys.executable, "-c", TRUNCATE_AFTER_MAPPING, str(sysroot), name],
        check=False,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    state, error = child.stdout.splitlines()[:2]
    assert state.split() == ["failed", "0"]  # refused before any syscall
    assert name in error and "\n" not in error, error


async def test_a_failed_retry_after_a_rewrite_during_the_load_keeps_no_image(
    sysroot: Path,
) -> None:
    """Rewritten in place during the load, then gone before the one more load can be
    prepared: the retry fails before any syscall while the first, untrustworthy image
    is still in the kernel.  It is unloaded: the state never says loaded or degraded
    for an image whose digests describe other bytes."""

    def rewrite_then_remove(initrd: Path, n: int) -> None:
        if n == 2:
            initrd.write_bytes(NEW_INITRD)
            initrd.unlink()

    r, b, kexec, holder, _ = await started_touching(sysroot, rewrite_then_remove)
    assert r.store.current.state == ImageState.LOADED
    holder.add_blocks(1)
    r.request("burst")
    await r.settle()
    cur = r.store.current
    assert cur.state not in (ImageState.LOADED, ImageState.DEGRADED), cur
    assert kexec.loads[-1][1] == [] and kexec.loads[-1][2] == KEXEC_ON_CRASH  # unloaded
    assert not b.own_load
    await r.stop()


async def test_a_new_input_set_is_hashed_off_the_event_loop(sysroot: Path) -> None:
    """Preparing hashes the whole kernel and initrd (disk reads on a cold page cache):
    it runs on the kexec thread, so D-Bus and the watchdog keep being answered."""
    import threading

    threads: list[str] = []

    class RecordingBuilder(X86ImageBuilder):
        def build(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            threads.append(threading.current_thread().name)
            return super().build(*args, **kwargs)

    kexec = ScriptedKexec()
    b = SegmentBackend(
        kexec,
        default_files(sysroot),
        sysroot,
        builder=RecordingBuilder(FakePurgatory),
        purgatory=fake_blob(),
    )
    r = reconciler(sysroot, b, TopologyHolder())
    await r.start()
    assert threads and threading.main_thread().name not in threads, threads
    assert len(kexec.loads) == 1
    await r.stop()
