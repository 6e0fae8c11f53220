"""State that never claims more than is true, in a real full file system.

The state directory is a 256 KiB tmpfs mounted for the test (it needs root to
mount; it skips otherwise, saying so), filled to ENOSPC.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdumpd.daemon.backends.dryrun import DryRunBackend
from kdumpd.daemon.reconciler import Reconciler
from kdumpd.daemon.state import ImageState, StateStore
from kdumpd.daemon.statefile import StateFile
from kdumpd.events.event import HotplugEvent
from tests.unit.daemon_fakes import RecordingBackend, TopologyHolder, no_sleep

EV = HotplugEvent("online", "memory", "/devices/system/memory/memory512")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (a real ENOSPC in the state directory)")
    mnt = tmp_path / "state"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "kdumpd-test", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> None:
    """Write until the file system says ENOSPC."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0")
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        (directory / "probe").write_bytes(b"x")
    assert info.value.errno == errno.ENOSPC
    (directory / "probe").unlink()


def make(state_dir: Path, holder: TopologyHolder, backend: object) -> Reconciler:
    return Reconciler(
        StateStore(),
        backend,  # type: ignore[arg-type]
        sysroot=state_dir.parent,
        state_dir=state_dir,
        read_topology=holder,
        quiet=0.005,
        max_staleness=0.05,
        sleep=no_sleep,
    )


def zero_byte_files(directory: Path) -> list[str]:
    return sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file() and p.stat().st_size == 0
    )


async def test_a_load_applied_while_state_json_cannot_be_written_is_not_adopted_later(
    small_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(small_fs, holder, backend)
    await r.start()
    assert StateFile(small_fs).load().generation == 1  # type: ignore[union-attr]
    fill(small_fs)
    holder.add_blocks(1)
    r.event(EV)
    await r.settle()
    s = r.store.current
    assert s.generation == 2 and s.state == ImageState.LOADED  # the load happened
    # ... but state.json could not say so: it is gone, not left at generation 1
    assert StateFile(small_fs).load() is None
    assert f"{small_fs / 'state.json'}" in s.last_error and "No space left" in s.last_error
    assert any(str(small_fs / "state.json") in rec.getMessage() for rec in caplog.records)
    assert [p for p in os.listdir(small_fs) if p.endswith(".tmp")] == []
    await r.stop()
    # a restart must not adopt "generation 1": it loads afresh (one load)
    r2 = make(small_fs, holder, backend)
    await r2.start()
    assert len(backend.applied) == 3
    assert r2.store.current.last_trigger == "start"
    await r2.stop()


async def test_dry_run_load_into_a_full_state_dir_fails_cleanly_and_says_so(
    small_fs: Path,
) -> None:
    holder = TopologyHolder()
    backend = DryRunBackend(small_fs, keep=64)
    r = make(small_fs, holder, backend)
    await r.start()
    before = r.store.current
    assert before.generation == 1 and not before.stale
    fill(small_fs)
    holder.add_blocks(4)
    r.event(EV)
    await r.settle()
    s = r.store.current
    # the load failed: the old image stays loaded, the state says degraded and stale,
    # and MemoryRanges is the machine's RAM now, not what the image covers
    assert s.state == ImageState.DEGRADED and s.stale and s.generation == 1
    assert "cannot write" in s.last_error and str(small_fs) in s.last_error
    assert s.memory_ranges[-1][1] == holder.ram_end
    assert s.covered_ranges == before.covered_ranges
    assert s.memory_ranges != s.covered_ranges
    # no 0-byte leftovers: no loads/0002.elfcorehdr, no temporary state file
    assert zero_byte_files(small_fs) == []
    assert not (small_fs / "loads" / "0002.elfcorehdr").exists()
    assert StateFile(small_fs).load().generation == 1  # type: ignore[union-attr]
    # space again: the retry applies generation 2
    (small_fs / "filler").unlink()
    r.event(EV)
    await r.settle()
    assert r.store.current.generation == 2 and not r.store.current.stale
    await r.stop()
