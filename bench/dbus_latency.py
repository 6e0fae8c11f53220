"""D-Bus property read latency of org.kdumpd1 while a 3,840-event storm replays.

Setup, per run:

* a private system-like ``dbus-daemon`` with the shipped policy (as the tests use);
* this process runs the service (:func:`kdumpd.interfaces.dbus.serve`) and, on the
  same event loop, a storm driver: the 32 -> 512 GiB resize storm from
  :func:`kdumpd.events.storm.memory_resize_storm` (3,840 ``online`` events), each
  event counted into the :class:`StateStore` (``events_received``, ``pending_events``)
  with a yield to the loop after each, and every 64 events a "burst" that parses
  the event's ``/proc/iomem``, publishes the new ranges/generation and emits
  ``ImageUpdated`` -- what the reconciler does, minus the kexec syscall;
* a separate client process issues sequential ``Properties.Get(State)`` and
  ``Properties.Get(MemoryRanges)`` calls (alternating) for the whole storm and
  reports each round trip's latency.

The baseline is the same client against the idle service in the same run.  The
storm is replayed in a loop until the client has taken its samples, so every sample
is taken under load.  Prints a table of medians over ``--runs`` runs.

    .venv/bin/python bench/dbus_latency.py [--runs 5] [--samples 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdumpd.core.iomem import parse_iomem  # noqa: E402
from kdumpd.daemon.state import DaemonState, ImageState, StateStore  # noqa: E402
from kdumpd.events.replay import ReplayRecord  # noqa: E402
from kdumpd.events.storm import memory_resize_storm  # noqa: E402
from kdumpd.interfaces.dbus import serve  # noqa: E402
from tests.integration.dbusbus import start_bus  # noqa: E402

BASE_IOMEM = """\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000f0000-000fffff : Reserved
00100000-bffdffff : System RAM
  01000000-01ffffff : Kernel code
  02000000-0267ffff : Kernel rodata
  2b000000-3affffff : Crash kernel
bffe0000-bfffffff : Reserved
fee00000-fee00fff : Local APIC
100000000-83fffffff : System RAM
"""
BURST = 64

CLIENT = r"""
import asyncio, json, sys, time
from dbus_fast import Message
from dbus_fast.aio import MessageBus

async def main(address, samples):
    bus = await MessageBus(bus_address=address).connect()
    props = ("State", "MemoryRanges")
    lat = []
    for i in range(samples):
        msg = Message(destination="org.kdumpd1", path="/org/kdumpd1",
                      interface="org.freedesktop.DBus.Properties", member="Get",
                      signature="ss", body=["org.kdumpd1.Manager", props[i % 2]])
        t0 = time.perf_counter_ns()
        reply = await bus.call(msg)
        lat.append(time.perf_counter_ns() - t0)
        assert reply.error_name is None, reply.body
    print(json.dumps(lat))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


class NullController:
    async def reload(self) -> None: ...
    async def rescan(self) -> None: ...
    async def load(self) -> None: ...
    async def unload(self) -> None: ...

    async def report(self) -> dict[str, Any]:
        return {}


def _pct(values: list[int], q: float) -> float:
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[k] / 1e6  # ms


async def _client(address: str, samples: int) -> list[int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        address,
        str(samples),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError("client failed")
    result: list[int] = json.loads(out)
    return result


async def _storm(store: StateStore, records: list[ReplayRecord], stop: asyncio.Event) -> int:
    """Replay until ``stop``; returns events delivered."""
    delivered = 0
    while not stop.is_set():
        for rec in records:
            if stop.is_set():
                break
            delivered += 1
            cur = store.current
            store.update(
                events_received=cur.events_received + 1,
                pending_events=cur.pending_events + 1,
                state=ImageState.UPDATING,
            )
            if delivered % BURST == 0:
                text = dict(rec.files)["proc/iomem"]
                ranges = tuple(
                    (r.start, r.end) for r in parse_iomem(text) if r.name == "System RAM"
                )
                gen = cur.generation + 1
                store.update(
                    state=ImageState.LOADED,
                    generation=gen,
                    memory_ranges=ranges,
                    covered_ranges=ranges,
                    events_coalesced=cur.events_coalesced + BURST - 1,
                    pending_events=0,
                    regenerations=cur.regenerations + 1,
                    last_update_usec=time.time_ns() // 1000,
                    last_trigger="memory",
                )
                store.image_updated(gen, "memory")
            await asyncio.sleep(0)
    return delivered


async def one_run(records: list[ReplayRecord], samples: int) -> dict[str, Any]:
    bus = start_bus()
    try:
        ranges = tuple((r.start, r.end) for r in parse_iomem(BASE_IOMEM) if r.name == "System RAM")
        store = StateStore(
            DaemonState(
                state=ImageState.LOADED,
                backend="bench",
                present_cpus=tuple(range(64)),
                covered_cpus=tuple(range(64)),
                memory_ranges=ranges,
                covered_ranges=ranges,
            )
        )
        service = await serve(bus.address, store, NullController())
        try:
            idle = await _client(bus.address, samples)
            stop = asyncio.Event()
            storm = asyncio.ensure_future(_storm(store, records, stop))
            t0 = time.perf_counter()
            loaded = await _client(bus.address, samples)
            stop.set()
            events = await storm
            elapsed = time.perf_counter() - t0
            signals = service.interface.emitted_properties_changed
        finally:
            await service.stop()
    finally:
        bus.stop()
    return {
        "idle_p50": _pct(idle, 0.50),
        "idle_p99": _pct(idle, 0.99),
        "storm_p50": _pct(loaded, 0.50),
        "storm_p99": _pct(loaded, 0.99),
        "storm_max": max(loaded) / 1e6,
        "events": events,
        "events_per_s": events / elapsed,
        "properties_changed": signals,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--samples", type=int, default=2000, help="property reads per phase")
    args = ap.parse_args()
    records = [r for r in memory_resize_storm(BASE_IOMEM) if r.action == "online"]
    assert len(records) == 3840, len(records)
    runs = [asyncio.run(one_run(records, args.samples)) for _ in range(args.runs)]

    def med(key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    print(
        f"org.kdumpd1 Properties.Get latency, {args.samples} sequential reads per phase, "
        f"median of {args.runs} runs"
    )
    print(f"{'phase':<28}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    print(f"{'idle daemon (baseline)':<28}{med('idle_p50'):>10.3f}{med('idle_p99'):>10.3f}{'':>10}")
    print(
        f"{'during 3,840-event storm':<28}{med('storm_p50'):>10.3f}{med('storm_p99'):>10.3f}"
        f"{med('storm_max'):>10.3f}"
    )
    print(
        f"ratio storm/idle: p50 {med('storm_p50') / med('idle_p50'):.2f}x, "
        f"p99 {med('storm_p99') / med('idle_p99'):.2f}x"
    )
    print(
        f"storm driver: {med('events'):.0f} events replayed during the reads "
        f"({med('events_per_s'):.0f} events/s), "
        f"PropertiesChanged emitted: {med('properties_changed'):.0f}"
    )
    target = 5.0
    verdict = "PASS" if med("storm_p99") <= target else "FAIL"
    print(f"target p99 <= {target} ms during the storm: {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
