from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdumpd.daemon.state import ImageState, StateStore
from kdumpd.interfaces.notify import Notifier, sd_notify, watchdog_interval


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    s.bind(path)
    s.setblocking(False)
    yield s, path
    s.close()


def drain(s: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(s.recv(4096).decode())
        except BlockingIOError:
            return out


def test_no_socket_is_a_noop() -> None:
    assert sd_notify("READY=1", {}) is False


def test_abstract_socket() -> None:
    name = f"kdumpd-test-{uuid.uuid4().hex}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    try:
        assert sd_notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert s.recv(100) == b"READY=1"
    finally:
        s.close()


def test_ready_after_first_image_and_status(notify_socket: tuple[socket.socket, str]) -> None:
    s, path = notify_socket
    store = StateStore()
    n = Notifier(store, {"NOTIFY_SOCKET": path})
    store.update(state=ImageState.LOADING)
    first = drain(s)
    assert first and all("READY=1" not in m for m in first)
    store.update(
        state=ImageState.LOADED,
        generation=1,
        covered_cpus=(0, 1),
        covered_ranges=((0, 10), (20, 30), (40, 50)),
    )
    msgs = drain(s)
    assert msgs[0].startswith("READY=1\nSTATUS=")
    assert "gen 1" in msgs[0] and "2 CPUs" in msgs[0] and "3 ranges" in msgs[0]
    store.update(pending_events=7)
    (m,) = drain(s)
    assert m.startswith("STATUS=") and "7 pending events" in m and "READY" not in m
    store.update(events_received=10)  # not a STATUS field: no datagram
    assert drain(s) == []
    assert n.ready


async def test_watchdog_pings_at_half_interval(notify_socket: tuple[socket.socket, str]) -> None:
    s, path = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env) == 0.02
    n = Notifier(StateStore(), env)
    assert n.start_watchdog() == 0.02
    await asyncio.sleep(0.11)
    pings = [m for m in drain(s) if m == "WATCHDOG=1"]
    assert 3 <= len(pings) <= 6
    n.stopping()
    await asyncio.sleep(0.05)
    assert drain(s) == ["STOPPING=1"]


def test_watchdog_off_without_usec_or_for_another_pid() -> None:
    assert watchdog_interval({"NOTIFY_SOCKET": "/x"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000000"}) == 0.5


def test_reloading_carries_monotonic_usec_and_reloaded_sends_ready(
    notify_socket: tuple[socket.socket, str],
) -> None:
    import time

    s, path = notify_socket
    n = Notifier(StateStore(), {"NOTIFY_SOCKET": path})
    before = time.monotonic_ns() // 1000
    n.reloading()
    n.reloaded()
    after = time.monotonic_ns() // 1000
    got = drain(s)
    assert got[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert before <= int(got[0].split("MONOTONIC_USEC=")[1]) <= after
    assert got[1].startswith("READY=1\nSTATUS=")
