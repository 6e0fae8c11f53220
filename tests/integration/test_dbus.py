"""org.kdumpd1 against a real dbus-daemon with the shipped policy file.

A session-scoped private bus is started from a generated system-like configuration
that ``<include>``s ``dbus/org.kdumpd1.conf``; a second, permissive bus reaches the
service's own uid check.  Unprivileged clients run under
``setpriv --reuid=65534 --regid=65534 --clear-groups``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from kdumpd.daemon.control import Busy
from kdumpd.daemon.state import DaemonState, ImageState, StateStore
from kdumpd.interfaces.dbus import (
    BUS_NAME,
    INTERFACE,
    OBJECT_PATH,
    PROPERTY_FIELDS,
    BusDisconnected,
    DBusService,
    serve,
)
from tests import nobody
from tests.integration.dbusbus import REPO, PrivateBus, dbus_daemon_path, start_bus
from tests.nobody import setpriv_nobody

pytestmark = pytest.mark.dbus

PYTHON = str(REPO / ".venv" / "bin" / "python")
XML_DOC = REPO / "docs" / "org.kdumpd1.Manager.xml"
NOBODY = ["setpriv", *nobody.NOBODY]

SAMPLE = DaemonState(
    state=ImageState.LOADED,
    backend="kexec_file_load",
    backend_reason="the kernel has no kexec_file_load (ENOSYS); /usr/sbin/kexec loads",
    generation=7,
    last_update_usec=1_763_700_000_123_456,
    last_update_duration_usec=1234,
    last_load_gap_usec=0,
    last_trigger="memory",
    events_received=3840,
    events_coalesced=3833,
    loads=2,
    present_cpus=(0, 1, 2, 3),
    covered_cpus=(0, 1, 2),
    memory_ranges=((0x1000, 0x9FFFF), (0x100000, 0x7FFFFFFF), (0x100000000, 0x87FFFFFFF)),
    covered_ranges=((0x1000, 0x9FFFF), (0x100000, 0x7FFFFFFF)),
    stale=True,
    stale_reason="the kernel skipped an in-place crash-hotplug update (kernel log: 'x')",
    elfcorehdr_used=4096,
    elfcorehdr_capacity=65536,
    crash_kernel_size=256 << 20,
    kernel_hotplug_support=True,
    last_error="memory: example error",
    load_limit_panic=12,
)

EXPECTED: dict[str, Any] = {
    "State": "loaded",
    "Backend": "kexec_file_load",
    "Generation": 7,
    "LastUpdateUSec": 1_763_700_000_123_456,
    "LastUpdateDurationUSec": 1234,
    "LastLoadGapUSec": 0,
    "EventsReceived": 3840,
    "EventsCoalesced": 3833,
    "Loads": 2,
    "PresentCPUs": [0, 1, 2, 3],
    "CoveredCPUs": [0, 1, 2],
    "MemoryRanges": [(0x1000, 0x9FFFF), (0x100000, 0x7FFFFFFF), (0x100000000, 0x87FFFFFFF)],
    "CoveredRanges": [(0x1000, 0x9FFFF), (0x100000, 0x7FFFFFFF)],
    "Stale": True,
    "BackendReason": "the kernel has no kexec_file_load (ENOSYS); /usr/sbin/kexec loads",
    "StaleReason": "the kernel skipped an in-place crash-hotplug update (kernel log: 'x')",
    "ElfcorehdrUsed": 4096,
    "ElfcorehdrCapacity": 65536,
    "CrashKernelSize": 256 << 20,
    "KernelHotplugSupport": True,
    "LastError": "memory: example error",
    "LoadLimitPanic": 12,
}


@dataclass
class FakeController:
    """Records calls; ``busy``/``fail`` make the next calls raise."""

    calls: list[str] = field(default_factory=list)
    busy: bool = False
    fail: Exception | None = None

    async def _do(self, name: str) -> None:
        if self.busy:
            raise Busy(name, "a load")
        if self.fail is not None:
            raise self.fail
        self.calls.append(name)

    async def reload(self) -> None:
        await self._do("reload")

    async def rescan(self) -> None:
        await self._do("rescan")

    async def load(self) -> None:
        await self._do("load")

    async def unload(self) -> None:
        await self._do("unload")

    async def report(self) -> dict[str, Any]:
        await self._do("report")
        return {"state": SAMPLE.to_json(), "extra": {"answer": 42}}


def _need_dbus() -> None:
    if dbus_daemon_path() is None:
        pytest.skip("dbus-daemon is not installed (Debian package dbus-daemon)")


def _need_owner() -> None:
    # The shipped policy lets only root own org.kdumpd1 (that is the point of it).
    if os.geteuid() != 0:
        pytest.skip("dbus/org.kdumpd1.conf lets only root own org.kdumpd1; run as root")


@pytest.fixture(scope="session")
def system_bus() -> Iterator[PrivateBus]:
    _need_dbus()
    bus = start_bus()
    yield bus
    bus.stop()


@pytest.fixture(scope="session")
def permissive_bus() -> Iterator[PrivateBus]:
    _need_dbus()
    bus = start_bus(permissive=True)
    yield bus
    bus.stop()


@dataclass
class Running:
    service: DBusService
    store: StateStore
    controller: FakeController
    address: str


@pytest.fixture
async def running(system_bus: PrivateBus) -> AsyncIterator[Running]:
    _need_owner()
    store = StateStore(SAMPLE)
    controller = FakeController()
    service = await serve(system_bus.address, store, controller)
    yield Running(service, store, controller, system_bus.address)
    await service.stop()


@pytest.fixture
async def client(system_bus: PrivateBus) -> AsyncIterator[MessageBus]:
    bus = await MessageBus(bus_address=system_bus.address).connect()
    yield bus
    bus.disconnect()


async def _run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _call(
    bus: MessageBus, member: str, signature: str = "", body: list[Any] | None = None
) -> Message:
    return await bus.call(
        Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface=INTERFACE,
            member=member,
            signature=signature,
            body=body or [],
        )
    )


async def _get_all(bus: MessageBus) -> dict[str, Any]:
    reply = await bus.call(
        Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface="org.freedesktop.DBus.Properties",
            member="GetAll",
            signature="s",
            body=[INTERFACE],
        )
    )
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    return {k: v.value for k, v in reply.body[0].items()}


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as uid 65534 with setpriv")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")


def _busctl_call(address: str, member: str, *args: str) -> list[str]:
    """argv of ``busctl call`` on our object and interface."""
    return [
        "busctl",
        f"--address={address}",
        "call",
        BUS_NAME,
        OBJECT_PATH,
        INTERFACE,
        member,
        *args,
    ]


def _nobody_can_run_venv() -> None:
    setpriv_nobody()  # skips, with the reason, when uid 65534 cannot run the venv


# -- introspection ------------------------------------------------------------


async def test_busctl_introspect_lists_interface(running: Running) -> None:
    if shutil.which("busctl") is None:
        pytest.skip("busctl (systemd) is not installed")
    code, out, err = await _run(
        "busctl", f"--address={running.address}", "introspect", BUS_NAME, OBJECT_PATH
    )
    assert code == 0, err
    assert INTERFACE in out
    for member in ("Reload", "Rescan", "Load", "Unload", "GetReport", "ImageUpdated"):
        assert f".{member} " in out
    for prop in PROPERTY_FIELDS:
        assert f".{prop} " in out


def _interface_element(xml_text: str) -> ET.Element:
    root = ET.fromstring(xml_text)
    for iface in root.iter("interface"):
        if iface.get("name") == INTERFACE:
            return iface
    raise AssertionError(f"{INTERFACE} not in introspection")


def _canonical(iface: ET.Element) -> list[tuple[str, str, tuple[tuple[str, str, str], ...]]]:
    out = []
    for child in iface:
        if child.tag == "annotation":
            continue
        args = tuple(
            (a.get("name") or "", a.get("type") or "", a.get("direction") or "")
            for a in child
            if a.tag == "arg"
        )
        kind = child.tag
        if kind == "property":
            kind = f"property:{child.get('type')}:{child.get('access')}"
        out.append((kind, child.get("name") or "", args))
    return sorted(out)


async def test_checked_in_xml_matches_live_object(running: Running, client: MessageBus) -> None:
    reply = await client.call(
        Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface="org.freedesktop.DBus.Introspectable",
            member="Introspect",
        )
    )
    assert reply.message_type is MessageType.METHOD_RETURN
    live = _canonical(_interface_element(reply.body[0]))
    doc = _canonical(_interface_element(XML_DOC.read_text()))
    assert live == doc, "docs/org.kdumpd1.Manager.xml is out of date with the live object"


# -- properties ---------------------------------------------------------------


async def test_every_property_value(running: Running, client: MessageBus) -> None:
    values = await _get_all(client)
    assert set(values) == set(PROPERTY_FIELDS)
    assert values == EXPECTED


async def test_single_get_and_readonly(running: Running, client: MessageBus) -> None:
    reply = await client.call(
        Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface="org.freedesktop.DBus.Properties",
            member="Get",
            signature="ss",
            body=[INTERFACE, "CoveredCPUs"],
        )
    )
    assert reply.body[0].value == [0, 1, 2]
    code, _out, err = await _run(
        "busctl",
        f"--address={running.address}",
        "set-property",
        BUS_NAME,
        OBJECT_PATH,
        INTERFACE,
        "Generation",
        "t",
        "9",
    )
    assert code != 0
    assert "Traceback" not in err


async def test_properties_changed_coalesced_and_image_updated(
    running: Running, client: MessageBus
) -> None:
    signals: list[Message] = []

    def collect(msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.path == OBJECT_PATH:
            signals.append(msg)

    client.add_message_handler(collect)
    rule = f"type='signal',sender='{BUS_NAME}',path='{OBJECT_PATH}'"
    await client.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=[rule],
        )
    )
    # A storm: 3,840 updates without yielding, then one image.
    for i in range(1, 3841):
        running.store.update(events_received=3840 + i, state=ImageState.UPDATING)
    running.store.update(
        state=ImageState.LOADED,
        generation=8,
        covered_cpus=(0, 1, 2, 3),
        stale=False,
        stale_reason="",  # a reason keeps Stale true
    )
    running.store.image_updated(8, "cpu")
    for _ in range(100):
        if any(m.member == "ImageUpdated" for m in signals):
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)

    changed = [m for m in signals if m.member == "PropertiesChanged"]
    images = [m for m in signals if m.member == "ImageUpdated"]
    assert images and images[0].body == [8, "cpu"]
    assert 1 <= len(changed) <= 3, f"not coalesced: {len(changed)} PropertiesChanged"
    merged: dict[str, Any] = {}
    for m in changed:
        assert m.body[0] == INTERFACE
        merged.update({k: v.value for k, v in m.body[1].items()})
    assert merged["EventsReceived"] == 7680
    assert merged["Generation"] == 8
    assert merged["State"] == "loaded"
    assert merged["CoveredCPUs"] == [0, 1, 2, 3]
    assert merged["Stale"] is False
    # PropertiesChanged precedes ImageUpdated, so a client's cache is current.
    assert signals.index(changed[-1]) < signals.index(images[0])


# -- methods and access control -----------------------------------------------


async def test_reload_as_root_calls_controller(running: Running, client: MessageBus) -> None:
    for member in ("Reload", "Rescan", "Load", "Unload"):
        reply = await _call(client, member)
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    assert running.controller.calls == ["reload", "rescan", "load", "unload"]
    reply = await _call(client, "GetReport")
    report = json.loads(reply.body[0])
    assert report["extra"] == {"answer": 42}
    assert report["state"]["generation"] == 7


async def test_busctl_reload_as_root(running: Running) -> None:
    code, _out, err = await _run(*_busctl_call(running.address, "Reload"))
    assert code == 0, err
    assert running.controller.calls == ["reload"]


async def test_reload_as_nobody_denied_without_polkit(running: Running) -> None:
    """The bus policy lets the call reach the daemon; with no polkitd on the bus the
    daemon answers as before polkit: only root may."""
    _need_root()
    _nobody_can_run_venv()
    script = (
        "import asyncio, sys\n"
        "from dbus_fast import Message\n"
        "from dbus_fast.aio import MessageBus\n"
        "async def main():\n"
        "    bus = await MessageBus(bus_address=sys.argv[1]).connect()\n"
        "    r = await bus.call(Message(destination='org.kdumpd1', path='/org/kdumpd1',"
        " interface='org.kdumpd1.Manager', member='Reload'))\n"
        "    print(r.message_type.name, r.error_name)\n"
        "    g = await bus.call(Message(destination='org.kdumpd1', path='/org/kdumpd1',"
        " interface='org.freedesktop.DBus.Properties', member='Get', signature='ss',"
        " body=['org.kdumpd1.Manager', 'Generation']))\n"
        "    print(g.message_type.name, g.body[0].value)\n"
        "    m = await bus.call(Message(destination='org.kdumpd1', path='/',"
        " interface='org.freedesktop.DBus.ObjectManager', member='GetManagedObjects'))\n"
        "    print(m.message_type.name,"
        " m.body[0]['/org/kdumpd1']['org.kdumpd1.Manager']['Generation'].value)\n"
        "asyncio.run(main())\n"
    )
    code, out, err = await _run(*NOBODY, PYTHON, "-c", script, running.address)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "ERROR org.kdumpd1.Error.AccessDenied", out
    assert lines[1] == "METHOD_RETURN 7", out  # reading properties is allowed
    assert lines[2] == "METHOD_RETURN 7", out  # and so is the ObjectManager view of them
    assert running.controller.calls == []


async def test_busctl_reload_as_nobody_denied(running: Running) -> None:
    _need_root()
    code, _out, err = await _run(
        *NOBODY,
        *_busctl_call(running.address, "Reload"),
    )
    assert code != 0
    assert "only root may call" in err and "polkit is not running" in err, err
    assert running.controller.calls == []


async def test_service_checks_uid_itself(permissive_bus: PrivateBus) -> None:
    """With a policy that lets anyone call, the service's own check still denies."""
    _need_root()
    _nobody_can_run_venv()
    store = StateStore(SAMPLE)
    controller = FakeController()
    service = await serve(permissive_bus.address, store, controller)
    try:
        script = (
            "import asyncio, sys\n"
            "from dbus_fast import Message\n"
            "from dbus_fast.aio import MessageBus\n"
            "async def main():\n"
            "    bus = await MessageBus(bus_address=sys.argv[1]).connect()\n"
            "    for m in ('Reload', 'Unload', 'GetReport'):\n"
            "        r = await bus.call(Message(destination='org.kdumpd1', path='/org/kdumpd1',"
            " interface='org.kdumpd1.Manager', member=m))\n"
            "        print(m, r.error_name, r.body[0])\n"
            "asyncio.run(main())\n"
        )
        code, out, err = await _run(*NOBODY, PYTHON, "-c", script, permissive_bus.address)
        assert code == 0, err
        lines = out.splitlines()
        assert len(lines) == 3
        for line in lines:
            assert " org.kdumpd1.Error.AccessDenied only root may call" in line, line
        assert controller.calls == []
        # Root on the same permissive bus is allowed.
        root = await MessageBus(bus_address=permissive_bus.address).connect()
        try:
            reply = await _call(root, "Reload")
            assert reply.message_type is MessageType.METHOD_RETURN
        finally:
            root.disconnect()
        assert controller.calls == ["reload"]
    finally:
        await service.stop()


async def test_wrong_argument_types(running: Running, client: MessageBus) -> None:
    reply = await _call(client, "Reload", "s", ["x"])
    assert reply.message_type is MessageType.ERROR
    assert reply.error_name == "org.freedesktop.DBus.Error.InvalidArgs"
    assert "Traceback" not in reply.body[0]
    reply = await _call(client, "GetReport", "au", [[1, 2]])
    assert reply.error_name == "org.freedesktop.DBus.Error.InvalidArgs"
    reply = await _call(client, "NoSuchMethod")
    assert reply.message_type is MessageType.ERROR
    assert running.controller.calls == []
    code, _out, err = await _run(
        *_busctl_call(running.address, "Reload", "t", "5"),
    )
    assert code != 0
    assert "Traceback" not in err and "takes signature" in err


async def test_busy_and_failures_are_dbus_errors(running: Running, client: MessageBus) -> None:
    running.controller.busy = True
    reply = await _call(client, "Reload")
    assert reply.error_name == "org.kdumpd1.Error.Busy"
    assert reply.body[0] == "reload: busy, a load in progress"
    running.controller.busy = False
    running.controller.fail = RuntimeError("secret internal detail /usr/lib/x.py")
    reply = await _call(client, "Load")
    assert reply.error_name == "org.kdumpd1.Error.Failed"
    assert "secret" not in reply.body[0] and "Traceback" not in reply.body[0]
    from kdumpd.core.errors import KdumpdError

    running.controller.fail = KdumpdError("/sys/kernel/kexec_crash_size: missing")
    reply = await _call(client, "Unload")
    assert reply.error_name == "org.kdumpd1.Error.Failed"
    assert reply.body[0] == "Unload: /sys/kernel/kexec_crash_size: missing"


async def test_name_taken_is_one_line_error(running: Running) -> None:
    from kdumpd.core.errors import KdumpdError

    with pytest.raises(KdumpdError, match=r"cannot own D-Bus name org\.kdumpd1: exists"):
        await serve(running.address, StateStore(), FakeController())


async def test_unreachable_bus_is_one_line_error(tmp_path: Path) -> None:
    from kdumpd.core.errors import KdumpdError

    with pytest.raises(KdumpdError, match="cannot connect to D-Bus"):
        await serve(f"unix:path={tmp_path}/nope", StateStore(), FakeController())


async def test_bus_loss_is_fatal_without_reconnect(permissive_bus: PrivateBus) -> None:
    """A private bus killed under the service: wait_disconnected raises."""
    bus = start_bus(permissive=True)
    try:
        service = await serve(bus.address, StateStore(), FakeController(), reconnect=False)
        waiter = asyncio.ensure_future(service.wait_disconnected())
        await asyncio.sleep(0.05)
        bus.kill()
        with pytest.raises(BusDisconnected):
            await asyncio.wait_for(waiter, 10)
        await service.stop()
    finally:
        bus.stop()


async def test_reconnects_after_bus_restart(permissive_bus: PrivateBus) -> None:
    """The bus dies and comes back: the service re-owns the name and serves the
    current state; wait_disconnected() does not fire."""
    bus = start_bus(permissive=True)
    try:
        store = StateStore(SAMPLE)
        service = await serve(bus.plain_address, store, FakeController())
        waiter = asyncio.ensure_future(service.wait_disconnected())
        bus.kill()
        await asyncio.sleep(0.3)
        store.update(generation=99)  # changes while disconnected are not lost
        bus.restart()
        for _ in range(100):
            if service.reconnects:
                break
            await asyncio.sleep(0.05)
        assert service.reconnects == 1
        client = await MessageBus(bus_address=bus.plain_address).connect()
        try:
            values = await _get_all(client)
        finally:
            client.disconnect()
        assert values["Generation"] == 99
        assert not waiter.done()
        await service.stop()
        await asyncio.wait_for(waiter, 5)
    finally:
        bus.stop()


async def test_stop_is_clean(system_bus: PrivateBus) -> None:
    _need_owner()
    service = await serve(system_bus.address, StateStore(), FakeController())
    waiter = asyncio.ensure_future(service.wait_disconnected())
    await service.stop()
    await asyncio.wait_for(waiter, 5)  # no BusDisconnected after stop()
    # The name is free again.
    service = await serve(system_bus.address, StateStore(), FakeController())
    await service.stop()


# -- kdumpctl status against the bus -------------------------------------------


def _sysroot(tmp: Path, loaded: str | None) -> Path:
    kernel = tmp / "sys" / "kernel"
    kernel.mkdir(parents=True)
    if loaded is not None:
        (kernel / "kexec_crash_loaded").write_text(f"{loaded}\n")
    (kernel / "kexec_crash_size").write_text(f"{256 << 20}\n")
    return tmp


def _kdumpctl(*args: str, address: str, sysroot: Path) -> list[str]:
    return [PYTHON, "-m", "kdumpd.interfaces.kdumpctl", "--sysroot", str(sysroot), *args]


def _env(address: str) -> dict[str, str]:
    return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address, "PYTHONPATH": str(REPO)}


async def test_kdumpctl_status_operational(running: Running, tmp_path: Path) -> None:
    root = _sysroot(tmp_path, "1")
    code, out, err = await _run(
        *_kdumpctl("status", address=running.address, sysroot=root), env=_env(running.address)
    )
    assert (code, out) == (0, ""), err
    assert "kdump: Kdump is operational" in err.splitlines()


async def test_kdumpctl_status_not_operational(running: Running, tmp_path: Path) -> None:
    running.store.update(state=ImageState.UNLOADED)
    root = _sysroot(tmp_path, "0")
    code, _out, err = await _run(
        *_kdumpctl("status", address=running.address, sysroot=root), env=_env(running.address)
    )
    assert code == 3, err
    assert "kdump: Kdump is not operational" in err.splitlines()


async def test_kdumpctl_status_daemon_loaded_but_no_crash_kernel(
    running: Running, tmp_path: Path
) -> None:
    """A daemon reporting "loaded" (e.g. in dry-run) is not enough: kdumpctl's test is
    that the kernel has a crash image, and a missing sysfs node means it has none."""
    running.store.update(state=ImageState.LOADED)
    for value in ("0", None):
        root = _sysroot(tmp_path / str(value), value)
        code, _out, err = await _run(
            *_kdumpctl("status", address=running.address, sysroot=root),
            env=_env(running.address),
        )
        assert code == 3, (value, err)
        assert "kdump: Kdump is not operational" in err.splitlines()


async def test_queries_never_bus_activate_the_daemon(tmp_path: Path) -> None:
    """Bus activation would start kdumpd.service, whose Conflicts= stops kdump.service
    (and unloads its crash kernel): status/stop/reload carry NO_AUTO_START; only
    `kdumpctl start` may activate."""
    services = tmp_path / "services"
    services.mkdir()
    marker = tmp_path / "activated"
    (services / "org.kdumpd1.service").write_text(
        "[D-BUS Service]\nName=org.kdumpd1\n"
        f"Exec=/bin/sh -c 'echo activated >> {marker}'\nUser=root\n"
    )
    bus = start_bus(servicedir=services)
    try:
        root = _sysroot(tmp_path / "root", "1")
        for command in ("status", "stop", "reload"):
            await _run(
                *_kdumpctl(command, address=bus.address, sysroot=root), env=_env(bus.address)
            )
            assert not marker.exists(), f"kdumpctl {command} bus-activated kdumpd"
        code, _out, _err = await _run(
            *_kdumpctl("start", address=bus.address, sysroot=root), env=_env(bus.address)
        )
        assert code != 0  # the stand-in never owns the name
        for _ in range(50):
            if marker.exists():
                break
            await asyncio.sleep(0.05)
        assert marker.read_text() == "activated\n"
    finally:
        bus.stop()


async def test_kdumpctl_status_daemon_failed_state(running: Running, tmp_path: Path) -> None:
    """The daemon's state decides when it is reachable."""
    running.store.update(state=ImageState.FAILED, last_error="load: EBUSY")
    root = _sysroot(tmp_path, "1")
    code, _out, err = await _run(
        *_kdumpctl("status", address=running.address, sysroot=root), env=_env(running.address)
    )
    assert code == 3, err
    assert "kdump: Kdump is not operational" in err.splitlines()


async def test_kdumpctl_status_without_daemon(tmp_path: Path) -> None:
    """No daemon on the bus: kdumpctl falls back to /sys/kernel/kexec_crash_loaded."""
    for value, expected in (("1", 0), ("0", 3), (None, 3)):
        root = _sysroot(tmp_path / str(value), value)
        code, _out, err = await _run(
            *_kdumpctl("status", address="", sysroot=root),
            env=_env(f"unix:path={tmp_path}/no-bus"),
        )
        assert code == expected, (value, err)


async def test_kdumpctl_reload_over_bus(running: Running, tmp_path: Path) -> None:
    root = _sysroot(tmp_path, "1")
    code, _out, err = await _run(
        *_kdumpctl("reload", address=running.address, sysroot=root), env=_env(running.address)
    )
    assert code == 0, err
    assert running.controller.calls == ["reload"]


async def test_kdumpctl_reload_as_nobody_fails_cleanly(running: Running, tmp_path: Path) -> None:
    _need_root()
    _nobody_can_run_venv()
    root = _sysroot(tmp_path, "1")
    tmp_path.chmod(0o755)
    code, _out, err = await _run(
        *NOBODY,
        *_kdumpctl("reload", address=running.address, sysroot=root),
        env=_env(running.address),
    )
    assert code == 1, err
    assert "Traceback" not in err
    assert err.strip() == (
        "kdump: reload: permission denied: only root may call org.kdumpd1.Manager methods "
        "(polkit is not running)"
    )
    assert "Rejected send message" not in err
    assert running.controller.calls == []


async def test_kdumpd_status_over_bus(running: Running) -> None:
    code, out, err = await _run(
        PYTHON,
        "-m",
        "kdumpd.cli",
        "status",
        "--bus-address",
        running.address,
        env=_env(running.address),
    )
    assert code == 4, err  # loaded but stale
    assert "Active: loaded" in out
    assert "Generation: 7" in out
    assert "Memory: 2/3 ranges covered" in out
    assert "Stale: yes (the kernel skipped an in-place crash-hotplug update" in out


# -- the real daemon on the test bus --------------------------------------------


async def _start_real_daemon(
    system_bus: PrivateBus, tmp_path: Path, **env: str
) -> asyncio.subprocess.Process:
    """`kdumpd run --backend dry-run` on a copy of a captured sysroot, on the test bus."""
    fixture = REPO / "tests" / "fixtures" / "synthetic-x86_64-before"
    if not (fixture / "proc" / "iomem").exists():
        pytest.skip(f"{fixture} is missing")
    root = tmp_path / "root"
    shutil.copytree(fixture, root)
    return await asyncio.create_subprocess_exec(
        PYTHON,
        *("-m", "kdumpd.cli", "run", "--backend", "dry-run"),
        *("--sysroot", str(root), "--state-dir", str(tmp_path / "state")),
        *("--config", "/dev/null"),
        env={**_env(system_bus.address), "KDUMPD_DBUS": "true", **env},
        stderr=asyncio.subprocess.PIPE,
    )


async def test_real_daemon_over_bus(system_bus: PrivateBus, tmp_path: Path) -> None:
    """`kdumpd run --backend dry-run` on a captured sysroot: the reconciler is the
    Controller, its StateStore drives the properties, Reload produces ImageUpdated."""
    _need_owner()
    proc = await _start_real_daemon(system_bus, tmp_path)
    client = await MessageBus(bus_address=system_bus.address).connect()
    try:
        values: dict[str, Any] = {}
        for _ in range(200):
            reply = await client.call(
                Message(
                    destination=BUS_NAME,
                    path=OBJECT_PATH,
                    interface="org.freedesktop.DBus.Properties",
                    member="GetAll",
                    signature="s",
                    body=[INTERFACE],
                )
            )
            if reply.message_type is MessageType.METHOD_RETURN:
                values = {k: v.value for k, v in reply.body[0].items()}
                if values.get("State") == "loaded":
                    break
            await asyncio.sleep(0.05)
        assert values.get("State") == "loaded", values
        assert values["Backend"] == "dry-run"
        assert values["CoveredCPUs"] == values["PresentCPUs"] != []
        assert values["CoveredRanges"] == values["MemoryRanges"] != []
        assert values["Stale"] is False
        generation = values["Generation"]

        images: list[list[Any]] = []

        def collect(msg: Message) -> None:
            if msg.message_type is MessageType.SIGNAL and msg.member == "ImageUpdated":
                images.append(msg.body)

        client.add_message_handler(collect)
        await client.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[f"type='signal',sender='{BUS_NAME}',member='ImageUpdated'"],
            )
        )
        reply = await _call(client, "Reload")
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        for _ in range(100):
            if images:
                break
            await asyncio.sleep(0.05)
        assert images and images[-1][0] > generation
        report = json.loads((await _call(client, "GetReport")).body[0])
        assert isinstance(report, dict) and report

        code, _out, err = await _run(
            *_kdumpctl("status", address=system_bus.address, sysroot=tmp_path / "root"),
            env=_env(system_bus.address),
        )
        assert code == 0, err
    finally:
        client.disconnect()
        if proc.returncode is None:
            proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), 15)
        assert "Traceback" not in stderr.decode(), stderr.decode()


async def test_nobody_may_introspect_and_ping_but_not_set(running: Running) -> None:
    _need_root()
    if shutil.which("busctl") is None:
        pytest.skip("busctl (systemd) is not installed")
    base = [*NOBODY, "busctl", f"--address={running.address}"]
    code, out, err = await _run(*base, "introspect", BUS_NAME, OBJECT_PATH, INTERFACE)
    assert code == 0, err
    assert ".Generation" in out and "emits-change" in out
    code, _out, err = await _run(
        *base, "call", BUS_NAME, OBJECT_PATH, "org.freedesktop.DBus.Peer", "Ping"
    )
    assert code == 0, err
    code, _out, err = await _run(
        *base, "set-property", BUS_NAME, OBJECT_PATH, INTERFACE, "Generation", "t", "3"
    )
    assert code != 0 and "Access denied" in err
    assert running.store.current.generation == 7


# -- failures reach the caller; READY=1 only with the name owned -----------------


async def test_failed_reload_reaches_dbus_and_kdumpctl(
    system_bus: PrivateBus, client: MessageBus, tmp_path: Path
) -> None:
    """The real reconciler: a Reload whose load fails is org.kdumpd1.Error.Failed (and
    `kdumpctl reload` exits 1), not OK with the state degraded behind it."""
    import errno

    from kdumpd.daemon.control import Operations
    from kdumpd.daemon.reconciler import Reconciler
    from tests.unit.daemon_fakes import RecordingBackend, TopologyHolder, no_sleep

    _need_owner()
    backend = RecordingBackend()
    store = StateStore()
    rec = Reconciler(
        store,
        backend,
        sysroot=tmp_path,
        state_dir=tmp_path / "state",
        read_topology=TopologyHolder(),
        sleep=no_sleep,
        retry_interval=3600,
    )
    await rec.start()
    service = await serve(system_bus.address, store, Operations(rec))
    try:
        backend.faults = [errno.EINVAL]
        backend.restore_faults = [errno.ENOMEM]
        reply = await _call(client, "Reload")
        assert reply.error_name == "org.kdumpd1.Error.Failed", reply.body
        assert "EINVAL" in reply.body[0] and "\n" not in reply.body[0]
        assert store.current.state == ImageState.FAILED
        backend.faults = [errno.ENOEXEC]
        root = _sysroot(tmp_path / "root", "0")
        code, out, err = await _run(
            *_kdumpctl("reload", address=system_bus.address, sysroot=root),
            env=_env(system_bus.address),
        )
        assert code == 1, (out, err)
        assert "ENOEXEC" in err and "Traceback" not in err
        reply = await _call(client, "Reload")  # and a good one is OK
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    finally:
        await service.stop()
        await rec.stop()


async def test_ready_is_sent_with_the_bus_name_owned(
    system_bus: PrivateBus, client: MessageBus, tmp_path: Path
) -> None:
    """`systemctl start kdumpd && kdumpctl status`: when READY=1 arrives, org.kdumpd1
    must already answer."""
    import socket

    _need_owner()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    proc = await _start_real_daemon(
        system_bus, tmp_path, NOTIFY_SOCKET=str(tmp_path / "notify.sock")
    )
    loop = asyncio.get_running_loop()
    try:
        while True:
            msg = (await asyncio.wait_for(loop.sock_recv(sock, 4096), 30)).decode()
            if "READY=1" in msg:
                break
        reply = await client.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="NameHasOwner",
                signature="s",
                body=[BUS_NAME],
            )
        )
        assert reply.body == [True], "READY=1 was sent before org.kdumpd1 was owned"
    finally:
        sock.close()
        if proc.returncode is None:
            proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), 15)
        assert "Traceback" not in stderr.decode(), stderr.decode()
