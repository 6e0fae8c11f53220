"""`kdumpd replay` end to end in dry-run, as a subprocess; and the udev adapter."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdumpd.events.replay import write_replay
from kdumpd.events.storm import hotplug_region, memory_resize_storm, write_memory_storm

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests/fixtures/guest-6.1-before"


def kdumpd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kdumpd.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


@pytest.fixture
def sysroot(tmp_path: Path) -> Iterator[Path]:
    # /proc and /sys live in memory; a tmpfs sysroot keeps the storm's 11,520 file
    # writes from being paced by the disk (ext4 here: ~70 us per small write).
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(dir=shm)) if os.access(shm, os.W_OK) else tmp_path
    root = base / "root"
    shutil.copytree(FIXTURE, root)
    yield root
    if base != tmp_path:
        shutil.rmtree(base, ignore_errors=True)


def test_storm_replay_covers_every_added_range(sysroot: Path, tmp_path: Path) -> None:
    storm = tmp_path / "storm.jsonl"
    base = (sysroot / "proc/iomem").read_text()
    assert write_memory_storm(sysroot, storm) == 3840
    added_lo = hotplug_region(base, 3840)
    state = tmp_path / "state"
    p = kdumpd(
        "replay",
        str(storm),
        "--sysroot",
        str(sysroot),
        "--backend",
        "dry-run",
        "--state-dir",
        str(state),
        "--json",
    )
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["events_delivered"] == 3840 and summary["events_received"] == 3840
    assert summary["state"] == "loaded" and not summary["stale"]
    storm_loads = summary["loads"] - 1  # minus the initial load at start
    assert 1 <= storm_loads <= 2, summary
    loads = [json.loads(x) for x in (state / "loads.jsonl").read_text().splitlines()]
    last = loads[-1]
    want_end = added_lo + 3840 * (128 << 20) - 1
    assert [added_lo, want_end] in last["ranges"]
    hdr = state / "loads" / last["segments"][0]
    if shutil.which("readelf") is None:
        pytest.skip("readelf not installed")
    out = subprocess.run(
        ["readelf", "-lW", str(hdr)], capture_output=True, text=True, check=True
    ).stdout
    assert f"0x{added_lo:016x}" in out and f"0x{3840 * (128 << 20):06x}" in out
    st = json.loads((state / "state.json").read_text())
    assert st["loaded"] and st["generation"] == summary["generation"]


def test_replay_bad_lines_exit_1_with_file_line(sysroot: Path, tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    write_replay(f, memory_resize_storm((sysroot / "proc/iomem").read_text(), blocks=2))
    f.write_text(f.read_text() + '{"at": 0, "action": "zap"}\n')
    p = kdumpd("replay", str(f), "--sysroot", str(sysroot), "--state-dir", str(tmp_path / "s"))
    assert p.returncode == 1
    assert f"{f}:3:" in p.stderr
    assert "Traceback" not in p.stderr


def test_replay_missing_file_and_usage(tmp_path: Path, sysroot: Path) -> None:
    p = kdumpd(
        "replay", str(tmp_path / "none"), "--sysroot", str(sysroot), "--state-dir", str(tmp_path)
    )
    assert p.returncode == 1 and p.stderr.count("\n") == 1
    p = kdumpd("replay", "x")
    assert p.returncode == 2


async def test_udev_kernel_monitor_receives_synthetic_uevent() -> None:
    if os.geteuid() != 0:
        pytest.skip("writing /sys/devices/system/cpu/cpu0/uevent needs root")
    uevent = Path("/sys/devices/system/cpu/cpu0/uevent")
    if not uevent.exists():
        pytest.skip(f"{uevent} does not exist on this machine")
    try:
        import pyudev  # noqa: F401
    except ImportError as err:
        pytest.skip(f"pyudev unusable: {err}")
    from kdumpd.events.event import HotplugEvent
    from kdumpd.events.udev import UdevSource

    got: list[HotplugEvent] = []
    src = UdevSource(got.append, source="netlink")
    src.start()
    try:
        tag = uuid.uuid4()
        uevent.write_text(f"change {tag}\n")
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
    finally:
        src.stop()
    assert got, "no uevent arrived"
    ev = got[0]
    assert (ev.action, ev.subsystem, ev.devpath) == ("change", "cpu", "/devices/system/cpu/cpu0")
    assert ev.seqnum is not None


def test_replay_refuses_real_backends_and_the_live_root(sysroot: Path, tmp_path: Path) -> None:
    f = tmp_path / "r.jsonl"
    write_replay(f, memory_resize_storm((sysroot / "proc/iomem").read_text(), blocks=1))
    before = (sysroot / "proc/iomem").read_text()
    for backend in ("file", "kernel"):
        p = kdumpd(
            "replay",
            str(f),
            "--sysroot",
            str(sysroot),
            "--backend",
            backend,
            "--state-dir",
            str(tmp_path / "s"),
        )
        assert p.returncode == 2, p.stderr  # not even offered (--help lists auto, dry-run)
        assert "invalid choice" in p.stderr and "Traceback" not in p.stderr
    assert (sysroot / "proc/iomem").read_text() == before  # nothing was replayed
    p = kdumpd("replay", str(f), "--sysroot", "/", "--state-dir", str(tmp_path / "s"))
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
    assert "refusing to replay onto the live system" in p.stderr


class _Dev:
    action, subsystem, device_path = "online", "memory", "/devices/system/memory/memory7"
    properties = {"SEQNUM": "7"}


class _Monitor:
    def __init__(self, script: list[object]) -> None:
        self.script = script
        self.polls = 0

    def poll(self, timeout: int) -> object:
        self.polls += 1
        if self.polls > 50:
            raise AssertionError("drain spins")
        item = self.script.pop(0) if self.script else None
        if isinstance(item, OSError):
            if not self.script:
                self.script.append(item)  # a persistent error repeats forever
            raise item
        return item

    def fileno(self) -> int:
        return 99


class _Loop:
    def __init__(self) -> None:
        self.removed: list[int] = []

    def remove_reader(self, fd: int) -> None:
        self.removed.append(fd)


def test_udev_drain_enobufs_rescans_and_other_errors_stop() -> None:
    import errno

    from kdumpd.events.event import HotplugEvent
    from kdumpd.events.udev import UdevSource

    got: list[HotplugEvent] = []
    src = UdevSource(got.append, source="netlink")
    loop = _Loop()
    src._loop = loop  # type: ignore[assignment]
    src._monitor = _Monitor([OSError(errno.ENOBUFS, "No buffer space"), _Dev(), None])
    src.drain()
    assert src.lost == 1 and src.received == 1
    assert [e.devpath for e in got] == ["/devices/system/memory", "/devices/system/memory/memory7"]
    got.clear()
    src._monitor = _Monitor([OSError(errno.EBADF, "Bad file descriptor")])
    src.drain()  # returns instead of spinning on the same error
    assert src._monitor is None and loop.removed == [99]
    assert [e.devpath for e in got] == ["/devices/system/memory"]  # one rescan


def test_replay_with_nothing_applied_says_none(sysroot: Path, tmp_path: Path) -> None:
    f = tmp_path / "r.jsonl"
    f.write_text(
        '{"at": 0, "action": "change", "subsystem": "cpu", "devpath": "/devices/system/cpu/cpu0"}\n'
    )
    p = kdumpd("replay", str(f), "--sysroot", str(sysroot), "--state-dir", str(tmp_path / "s"))
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("last_event_to_applied_ms"))
    assert line.split()[-1] == "none", p.stdout
