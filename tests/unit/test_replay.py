from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from kdumpd.core.errors import InputError
from kdumpd.events.event import HotplugEvent, event_from_fields
from kdumpd.events.replay import Replayer, ReplayStats, parse_record, read_replay, write_replay
from kdumpd.events.storm import RESIZE_BLOCKS, cpu_add_storm, memory_resize_storm
from kdumpd.system.topologyreader import read_topology
from tests.unit.daemon_fakes import FIXTURE


def test_event_validation() -> None:
    ev = event_from_fields("online", "memory", "/devices/system/memory/memory9", "42")
    assert ev.seqnum == 42
    for bad in [
        ("online", "block", "/devices/system/memory/memory9"),
        ("explode", "memory", "/devices/system/memory/memory9"),
        ("online", "cpu", "/devices/system/memory/memory9"),
        ("online", "cpu", "/devices/system/cpu/../../etc"),
    ]:
        with pytest.raises(InputError):
            event_from_fields(*bad)


def test_bad_lines_named_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "r.jsonl"
    good = '{"at": 0, "action": "add", "subsystem": "cpu", "devpath": "/devices/system/cpu/cpu3"}'
    p.write_text(
        "\n".join(
            [
                good,
                "{nope",
                '{"at": -1, "action": "add", "subsystem": "cpu",'
                ' "devpath": "/devices/system/cpu/cpu1"}',
                '{"at": 1, "action": "add", "subsystem": "cpu",'
                ' "devpath": "/devices/system/cpu/cpu1", "files": {"../etc/passwd": "x"}}',
                '{"at": 1, "action": "add", "subsystem": "disk", "devpath": "/devices/x"}',
                "",
                "# comment",
                good,
            ]
        )
    )
    stats = ReplayStats()
    recs = list(read_replay(p, stats))
    assert len(recs) == 2 and stats.skipped == 4
    assert [e.split(": ")[0] for e in stats.errors] == [f"{p}:{n}" for n in (2, 3, 4, 5)]
    assert all(m.startswith(f"{p}:") for m in caplog.messages)


def test_record_roundtrip() -> None:
    recs = list(cpu_add_storm([0], 1, 2))
    for r in recs:
        assert parse_record(r.to_json(), "x", 1) == r


async def test_files_written_before_delivery_and_timing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    seen: list[tuple[HotplugEvent, str, float]] = []
    online = root / "sys/devices/system/cpu/cpu1/online"

    def sink(ev: HotplugEvent) -> None:
        seen.append((ev, online.read_text() if online.exists() else "", time.monotonic()))

    p = tmp_path / "cpu.jsonl"
    write_replay(p, cpu_add_storm([0], 1, 1, interval=0.1))
    lines = p.read_text().splitlines()
    # spread the two events 0.2 s apart
    second = json.loads(lines[1])
    second["at"] = 0.2
    p.write_text(lines[0] + "\n" + json.dumps(second) + "\n")
    t0 = time.monotonic()
    stats = await Replayer(root, sink, speed=2.0).run_file(p)
    assert stats.delivered == 2 and stats.skipped == 0
    assert [s[1] for s in seen] == ["0\n", "1\n"]  # file content at delivery time
    assert 0.09 <= seen[1][2] - t0 < 0.3  # 0.2 s scaled by speed 2
    topo = read_topology(root)
    assert 1 in topo.present_cpus and 1 in topo.online_cpus


def test_memory_storm_grows_ram_by_blocks() -> None:
    base = (FIXTURE / "proc/iomem").read_text()
    recs = list(memory_resize_storm(base, blocks=16))
    assert len(recs) == 16 and {r.action for r in recs} == {"online"}
    assert len(list(memory_resize_storm(base, blocks=16, with_add=True))) == 32
    last_iomem = dict(recs[-1].files)["proc/iomem"]
    first_iomem = dict(recs[0].files)["proc/iomem"]
    assert len(last_iomem.splitlines()) == len(base.splitlines()) + 1
    assert last_iomem != first_iomem
    assert RESIZE_BLOCKS * (128 << 20) == (512 - 32) << 30


async def test_replay_never_writes_through_a_symlink_out_of_the_sysroot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "sys/devices/system/memory/memory9").mkdir(parents=True)
    outside.mkdir()
    (root / "escape").symlink_to(outside)  # a directory link, absolute
    (root / "proc").mkdir()
    (root / "proc/device-tree").symlink_to(outside)  # like a captured ppc64le tree
    (outside / "target").write_text("keep\n")
    (root / "link-file").symlink_to(outside / "target")  # the last component
    p = tmp_path / "r.jsonl"
    ev = '"action": "online", "subsystem": "memory", "devpath": "/devices/system/memory/memory9"'
    lines = [
        f'{{"at": 0, {ev}, "files": {{"escape/pwned": "x"}}}}',
        f'{{"at": 0, {ev}, "files": {{"proc/device-tree/cpus/x": "x"}}}}',
        f'{{"at": 0, {ev}, "files": {{"link-file": "x"}}}}',
        f'{{"at": 0, {ev}, "files": {{"sys/devices/system/memory/memory9/online": "1",'
        ' "sys/new/dir/file": "y"}}',
    ]
    p.write_text("\n".join(lines) + "\n")
    got: list[HotplugEvent] = []
    stats = await Replayer(root, got.append, speed=0).run_file(p)
    assert not (outside / "pwned").exists() and not (outside / "cpus").exists()
    assert (outside / "target").read_text() == "keep\n"
    assert stats.delivered == 1 and stats.skipped == 3 and len(got) == 1
    assert (root / "sys/devices/system/memory/memory9/online").read_text() == "1"
    assert (root / "sys/new/dir/file").read_text() == "y"
    for n, err in enumerate(stats.errors, 1):
        assert err.startswith(f"{p}:{n}: ") and "event skipped" in err and "\n" not in err
    assert "escape/pwned" in stats.errors[0] and "symlink" in stats.errors[0]
    assert sum(f"{p}:" in m for m in caplog.messages) == 3
