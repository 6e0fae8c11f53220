"""The metrics file of a real dry-run daemon fed a replayed storm: a Prometheus parser
reads it at any moment, its values follow the storm, it is written at most once per
second, and at the end it says what the daemon's state says."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from kdumpd.config import load_settings
from kdumpd.daemon.state import DaemonState
from kdumpd.events.storm import write_memory_storm
from kdumpd.service import Daemon

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests/fixtures/guest-6.1-before"


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def one(m: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str) -> float:
    (v,) = m[name].values()
    return v


def check_against(m: dict[str, dict[tuple[tuple[str, str], ...], float]], s: DaemonState) -> None:
    assert one(m, "kdumpd_events_total") == s.events_received
    assert one(m, "kdumpd_events_coalesced_total") == s.events_coalesced
    assert one(m, "kdumpd_loads_total") == s.loads
    assert one(m, "kdumpd_load_failures_total") == s.load_failures == 0
    assert one(m, "kdumpd_generation") == s.generation
    assert one(m, "kdumpd_regenerations_total") == s.regenerations
    assert one(m, "kdumpd_last_update_timestamp_seconds") == s.last_update_usec / 1e6
    assert one(m, "kdumpd_last_load_gap_seconds") == s.last_load_gap_usec / 1e6
    assert one(m, "kdumpd_load_gap_seconds_total") == s.load_gaps_usec / 1e6
    assert m["kdumpd_state"][(("state", str(s.state)),)] == 1
    assert m["kdumpd_stale"] == {(("reason", ""),): 0}
    assert m["kdumpd_backend_info"] == {(("backend", "dry-run"),): 1}
    assert one(m, "kdumpd_elfcorehdr_used_bytes") == s.elfcorehdr_used
    assert one(m, "kdumpd_crash_kernel_size_bytes") == s.crash_kernel_size
    # the kernel's word: the fixture's kexec_crash_loaded (a dry run loads nothing)
    assert one(m, "kdumpd_crash_image_loaded") == 0
    assert "kdumpd_kexec_load_limit_panic" not in m  # 6.1 has no such sysctl
    # loading until the first load, then only the (simulated) gaps inside loads
    assert one(m, "kdumpd_no_crash_image_seconds_total") >= s.load_gaps_usec / 1e6


async def test_metrics_follow_a_replayed_storm_once_per_second(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    storm = tmp_path / "storm.jsonl"
    events = write_memory_storm(root, storm, blocks=360, interval=0.01)  # 3.6 s of events
    metrics = tmp_path / "textfile" / "kdumpd.prom"
    metrics.parent.mkdir()
    settings = load_settings(
        None,
        {
            "sysroot": str(root),
            "state_dir": str(tmp_path / "state"),
            "backend": "dry-run",
            "dbus": False,
            "metrics_file": str(metrics),
        },
        env={},
    )
    d = Daemon(settings, replay=storm, speed=1.0, exit_after_replay=True, env={})
    seen: list[tuple[float, float, float]] = []  # events, loads, generation, as read

    async def watch() -> None:
        while True:
            if metrics.exists():
                m = parse(metrics.read_text())  # never a half file: always parses
                seen.append(
                    (
                        one(m, "kdumpd_events_total"),
                        one(m, "kdumpd_loads_total"),
                        one(m, "kdumpd_generation"),
                    )
                )
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    result = await d.run()
    watcher.cancel()
    assert result.replay is not None and result.replay.delivered == events
    s = d.store.current
    assert s.events_received == events and not s.stale and str(s.state) == "loaded"

    # at the end the file says what the daemon's state says
    check_against(parse(metrics.read_text()), s)

    # it followed the storm: the events counter rose through values between 0 and the
    # total, and nothing read ever went backwards
    events_seen = [e for e, _, _ in seen]
    assert events_seen == sorted(events_seen)
    middle = {e for e in events_seen if 0 < e < events}
    assert len(middle) >= 2, sorted(set(events_seen))
    assert [g for _, _, g in seen] == sorted(g for _, _, g in seen)

    # at most once per second, however many times the store changed (the write at
    # exit, if anything changed since the last one, may come sooner)
    assert d.metrics is not None
    times = list(d.metrics.write_times)[:-1]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and min(gaps) >= 1.0, gaps
    assert len(times) <= (times[-1] - times[0]) + 2


def test_replay_command_writes_the_metrics_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    storm = tmp_path / "storm.jsonl"
    events = write_memory_storm(root, storm, blocks=64)
    metrics = tmp_path / "kdumpd.prom"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdumpd.cli",
            "replay",
            str(storm),
            "--sysroot",
            str(root),
            "--state-dir",
            str(tmp_path / "state"),
            "--metrics-file",
            str(metrics),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    m = parse(metrics.read_text())
    assert one(m, "kdumpd_events_total") == summary["events_received"] == events
    assert one(m, "kdumpd_loads_total") == summary["loads"]
    assert one(m, "kdumpd_generation") == summary["generation"]
    assert m["kdumpd_state"][(("state", "loaded"),)] == 1
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith("kdumpd.prom")] == [
        "kdumpd.prom"
    ]


def test_run_metrics_file_flag_and_sigterm(tmp_path: Path) -> None:
    """`kdumpd run --metrics-file`: the file appears with the first load, and SIGTERM
    leaves it whole and in step with state.json."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    metrics = tmp_path / "kdumpd.prom"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kdumpd.cli",
            "run",
            "--sysroot",
            str(root),
            "--state-dir",
            str(tmp_path / "state"),
            "--backend",
            "dry-run",
            "--no-dbus",
            "--metrics-file",
            str(metrics),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        end = time.monotonic() + 30
        while True:
            assert time.monotonic() < end, "no loaded state in the metrics file"
            assert p.poll() is None, p.communicate()
            if metrics.exists():
                m = parse(metrics.read_text())
                if m["kdumpd_state"][(("state", "loaded"),)] == 1:
                    break
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        _out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    m = parse(metrics.read_text())
    recorded = json.loads((tmp_path / "state/state.json").read_text())
    assert one(m, "kdumpd_generation") == recorded["generation"] == 1
    assert one(m, "kdumpd_loads_total") == recorded["loads"] == 1
    assert m["kdumpd_backend_info"] == {(("backend", "dry-run"),): 1}
