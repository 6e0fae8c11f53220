"""Hotplug-storm benchmark for kdumpd (issue 3 targets).

    .venv/bin/python bench/storm.py [--runs 5]

1. The 3,840-event 32 → 512 GiB resize storm replayed at full speed through the
   daemon (dry-run backend, sysroot on tmpfs): loads for the storm (target ≤ 2) and
   time from the last event to the applied image (target ≤ 0.5 s).  Baseline in the
   same run: reload per event (unload + read + build + load with the same dry-run
   backend), timed on every 16th event and multiplied out.
2. Sustained 50,000 events/s for 2 s through the udev adapter's drain (a fake
   monitor queue standing in for the netlink socket) into the reconciler, while the
   topology changes: every event must be counted (no loss), loads stay bounded.
3. An idle ``kdumpd run`` (dry-run, kernel uevent source) for 5 s: wake-ups
   (voluntary context switches of all its threads) with and without
   ``WATCHDOG_USEC=2s``, and RSS.
Prints one table; medians over ``--runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdumpd.config import load_settings  # noqa: E402
from kdumpd.demo import demo_sysroot, run_old_way  # noqa: E402
from kdumpd.events.storm import write_memory_storm  # noqa: E402
from kdumpd.service import Daemon  # noqa: E402


def storm_once() -> dict[str, float]:
    with demo_sysroot() as base:
        shutil.copytree(base / "sysroot", base / "sysroot-pristine")
        storm = base / "storm.jsonl"
        n = write_memory_storm(base / "sysroot", storm)
        s = load_settings(
            None,
            {
                "sysroot": str(base / "sysroot"),
                "state_dir": str(base / "state"),
                "backend": "dry-run",
                "dbus": False,
            },
            env={},
        )
        d = Daemon(s, replay=storm, speed=0, exit_after_replay=True)
        t0 = time.monotonic()
        res = asyncio.run(d.run())
        wall = time.monotonic() - t0
        st = res.state
        ok = (
            res.replay is not None
            and res.replay.delivered == n
            and st["events_received"] == n
            and not st["stale"]
        )
        old = run_old_way(base, storm, n, 16, show_progress=False)
        return {
            "events": n,
            "storm_loads": int(st["loads"]) - 1,
            "to_applied_s": res.last_event_to_applied or float("nan"),
            "wall_s": wall,
            "ok": float(ok),
            "old_loads": old["loads"],
            "old_window_s": old["total_window_s"],
            # old way: udev runs the reloads one after another; the last one is done
            # after all of them (events arrive in well under a second)
            "old_to_applied_s": old["total_window_s"],
        }


class FakeDevice:
    __slots__ = ("action", "device_path", "properties", "subsystem")

    def __init__(self, seq: int, block: int) -> None:
        self.action = "online"
        self.subsystem = "memory"
        self.device_path = f"/devices/system/memory/memory{block}"
        self.properties = {"SEQNUM": str(seq)}


class FakeMonitor:
    """Stands in for pyudev.Monitor: poll(0) pops what the 'kernel' queued."""

    def __init__(self) -> None:
        self.queue: list[FakeDevice] = []
        self.i = 0

    def poll(self, timeout: float = 0) -> FakeDevice | None:
        if self.i < len(self.queue):
            d = self.queue[self.i]
            self.i += 1
            return d
        return None


def sustained_once(rate: int = 50_000, seconds: float = 2.0) -> dict[str, float]:
    from kdumpd.daemon.reconciler import Reconciler
    from kdumpd.daemon.state import StateStore
    from kdumpd.events.udev import UdevSource
    from tests.unit.daemon_fakes import RecordingBackend, TopologyHolder

    async def go() -> dict[str, float]:
        holder = TopologyHolder()
        backend = RecordingBackend("dry-run")
        with tempfile.TemporaryDirectory() as tmp:
            r = Reconciler(StateStore(), backend, sysroot=tmp, state_dir=tmp, read_topology=holder)
            await r.start()
            src = UdevSource(r.event, source="kernel")
            mon = FakeMonitor()
            src._monitor = mon  # the adapter under test, minus the netlink socket
            total = int(rate * seconds)
            tick = 0.001
            per_tick = int(rate * tick)
            t0 = time.perf_counter()
            sent = 0
            busy = 0.0
            while sent < total:
                target = t0 + (sent / rate)
                delay = target - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                b0 = time.perf_counter()
                for _ in range(per_tick):
                    mon.queue.append(FakeDevice(sent, 10_000 + sent))
                    sent += 1
                    if sent % 1000 == 0:
                        holder.add_blocks()
                src.drain()  # what loop.add_reader would call
                busy += time.perf_counter() - b0
            elapsed = time.perf_counter() - t0
            await r.settle()
            s = r.store.current
            await r.stop()
            return {
                "sent": sent,
                "received": float(s.events_received),
                "rate": sent / elapsed,
                "loads": float(len(backend.applied) - 1),
                "us_per_event": busy / sent * 1e6,
                "final_ok": float(backend.applied_ends[-1] == holder.ram_end),
            }

    return asyncio.run(go())


def _ctx_switches(pid: int) -> int:
    n = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                n += int(line.split()[1])
    return n


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def idle_once(watchdog_usec: int | None, seconds: float = 5.0) -> dict[str, float]:
    with demo_sysroot() as base:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = str(base / "notify.sock")
        sock.bind(path)
        sock.settimeout(30)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY", "WATCHDOG"))}
        env["NOTIFY_SOCKET"] = path
        env["PYTHONPATH"] = str(REPO)
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kdumpd.cli",
                "run",
                "--sysroot",
                str(base / "sysroot"),
                "--state-dir",
                str(base / "state"),
                "--backend",
                "dry-run",
                "--no-dbus",
                "--event-source",
                "netlink",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while b"READY=1" not in sock.recv(4096):
                pass
            time.sleep(0.5)
            c0 = _ctx_switches(proc.pid)
            time.sleep(seconds)
            c1 = _ctx_switches(proc.pid)
            rss = _rss_kib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)
            sock.close()
        return {"wakeups": float(c1 - c0), "per_s": (c1 - c0) / seconds, "rss_mib": rss / 1024}


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    def many(fn: Callable[[], dict[str, Any]], n: int) -> list[dict[str, float]]:
        return [fn() for _ in range(n)]

    storms = many(storm_once, args.runs)
    sus = many(sustained_once, args.runs)
    idle_wd = many(lambda: idle_once(2_000_000), max(1, args.runs // 2))
    idle_nowd = many(lambda: idle_once(None), max(1, args.runs // 2))

    rows = [
        ("storm: events", f"{median(storms, 'events'):.0f}", "", ""),
        (
            "storm: loads (after start)",
            f"{median(storms, 'storm_loads'):.0f}",
            f"{median(storms, 'old_loads'):.0f}",
            "<= 2",
        ),
        (
            "storm: last event -> applied (s)",
            f"{median(storms, 'to_applied_s'):.3f}",
            f"{median(storms, 'old_to_applied_s'):.1f}",
            "<= 0.5",
        ),
        (
            "storm: no-image time (s)",
            "0 (kernel) / 1 load (file)",
            f"{median(storms, 'old_window_s'):.1f}",
            "",
        ),
        ("storm: replay wall time (s)", f"{median(storms, 'wall_s'):.2f}", "", ""),
        ("storm: all events counted, not stale", f"{min(r['ok'] for r in storms):.0f}", "", "1"),
        ("sustained: events sent", f"{median(sus, 'sent'):.0f}", "", ""),
        ("sustained: events received", f"{median(sus, 'received'):.0f}", "", "= sent"),
        ("sustained: achieved rate (ev/s)", f"{median(sus, 'rate'):.0f}", "", ">= 50000"),
        ("sustained: CPU per event (us)", f"{median(sus, 'us_per_event'):.2f}", "", ""),
        ("sustained: loads in 2 s", f"{median(sus, 'loads'):.0f}", "", "bounded"),
        ("sustained: final image current", f"{min(r['final_ok'] for r in sus):.0f}", "", "1"),
        (
            "idle 5 s, WATCHDOG_USEC=2s: wake-ups",
            f"{median(idle_wd, 'wakeups'):.0f}",
            "",
            "~5 (pings)",
        ),
        ("idle 5 s, no watchdog: wake-ups", f"{median(idle_nowd, 'wakeups'):.0f}", "", "0"),
        ("idle RSS (MiB)", f"{median(idle_wd, 'rss_mib'):.1f}", "", "<= 40"),
    ]
    print(
        f"kdumpd storm bench — medians of {args.runs} runs "
        f"(idle: {max(1, args.runs // 2)} runs); baseline = reload per event"
    )
    w = max(len(r[0]) for r in rows)
    print(f"{'metric':{w}}  {'kdumpd':>26}  {'baseline':>10}  target")
    for name, val, base, tgt in rows:
        print(f"{name:{w}}  {val:>26}  {base:>10}  {tgt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
