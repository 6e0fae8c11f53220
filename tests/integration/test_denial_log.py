"""Denied D-Bus calls name the method and the caller and cannot flood the journal."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from kdumpd.daemon.state import StateStore
from kdumpd.interfaces.dbus import BUS_NAME, INTERFACE, OBJECT_PATH, DenialLog, serve
from tests.integration.dbusbus import PrivateBus, dbus_daemon_path, start_bus
from tests.unit.daemon_fakes import RecordingController


@pytest.fixture
def bus() -> Iterator[PrivateBus]:
    if dbus_daemon_path() is None:
        pytest.skip("dbus-daemon not installed (Debian package dbus-daemon)")
    b = start_bus(permissive=True)  # the service's own uid check is what denies
    yield b
    b.stop()


async def test_a_thousand_denied_calls_are_six_warnings_naming_method_and_uid(
    bus: PrivateBus, caplog: pytest.LogCaptureFixture
) -> None:
    async def nobody(_sender: str) -> int:
        return 65534

    controller = RecordingController()
    service = await serve(bus.address, StateStore(), controller, uid_lookup=nobody)
    client = await MessageBus(bus_address=bus.address).connect()
    try:
        with caplog.at_level(logging.WARNING, logger="kdumpd.interfaces.dbus"):
            replies = []
            for i in range(1000):  # one at a time: dbus-fast drops a flooded connection
                msg = Message(
                    destination=BUS_NAME,
                    path=OBJECT_PATH,
                    interface=INTERFACE,
                    member="Reload" if i % 2 else "Unload",
                )
                replies.append(await client.call(msg))
            await service.stop()
    finally:
        client.disconnect()
    assert all(r is not None and r.message_type is MessageType.ERROR for r in replies)
    assert controller.calls == []
    messages = [r.getMessage() for r in caplog.records if r.name == "kdumpd.interfaces.dbus"]
    denied = [m for m in messages if m.startswith("denied ")]
    assert len(denied) == 6, messages
    for m in denied[:5]:
        assert m.startswith(("denied Reload to uid 65534", "denied Unload to uid 65534")), m
    assert denied[5].startswith("denied 995 more method calls in the last 60 s")
    assert "Reload x" in denied[5] and "Unload x" in denied[5] and "uid 65534" in denied[5]


def test_denial_log_windows(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    dl = DenialLog(burst=2, interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="kdumpd.interfaces.dbus"):
        for _ in range(5):
            dl.denied("Load", 1000, ":1.7")
        now[0] = 11.0  # a new window: the summary of the last one, then one line
        dl.denied("Rescan", 1001, ":1.8")
        dl.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("denied Load to uid 1000 (:1.7)")
    assert len(lines) == 4
    assert lines[2] == (
        "denied 3 more method calls in the last 10 s (not logged one by one): Load x3 by uid 1000"
    )
    assert lines[3].startswith("denied Rescan to uid 1001 (:1.8)")
