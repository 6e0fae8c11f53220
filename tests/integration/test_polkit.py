"""A real polkitd on the test bus decides who may call kdumpd's methods.

polkitd reads its actions from /usr/share/polkit-1/actions and its rules from
/etc/polkit-1/rules.d and /usr/share/polkit-1/rules.d, nowhere else.  The test runs it
in a private mount namespace (``unshare --mount``) in which those three directories are
bind mounts of temporary ones holding only the project's ``polkit/org.kdumpd1.policy``
and one rules file: uid 65534 ("nobody") may ``org.kdumpd1.rescan``.  The machine's
own polkit configuration is never touched.  polkitd connects to the test bus through
``DBUS_SYSTEM_BUS_ADDRESS`` and owns ``org.freedesktop.PolicyKit1`` there as the
polkitd user.

Then: nobody may Rescan and nothing else; uid 1 ("daemon") may do nothing; root may do
everything (without polkit being asked).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from kdumpd.daemon.state import DaemonState, StateStore
from kdumpd.interfaces.dbus import BUS_NAME, INTERFACE, OBJECT_PATH, serve
from kdumpd.interfaces.polkit import AUTHORITY_PATH, METHOD_ACTIONS, POLKIT_NAME
from tests.integration.dbusbus import PrivateBus, dbus_daemon_path, start_bus
from tests.nobody import setpriv_nobody
from tests.unit.daemon_fakes import RecordingController

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "polkit" / "org.kdumpd1.policy"
POLKITD = Path("/usr/lib/polkit-1/polkitd")
METHODS = ("Reload", "Load", "Unload", "Rescan", "GetReport")
RULES = """// test: uid 65534 may make kdumpd rescan, nothing else
polkit.addRule(function(action, subject) {
    if (action.id == "org.kdumpd1.rescan" && subject.user == "nobody") {
        return polkit.Result.YES;
    }
});
"""
CLIENT = """import asyncio, sys
from dbus_fast import Message
from dbus_fast.aio import MessageBus
async def main():
    bus = await MessageBus(bus_address=sys.argv[1]).connect()
    for m in sys.argv[2:]:
        r = await bus.call(Message(destination='org.kdumpd1', path='/org/kdumpd1',
                                   interface='org.kdumpd1.Manager', member=m))
        text = r.body[0] if r.error_name and r.body else ''
        print(m, r.message_type.name, r.error_name or '-', text)
asyncio.run(main())
"""


def _missing() -> str | None:
    """Why this machine cannot run the test, or None."""
    if os.geteuid() != 0:
        return "needs root (polkitd switches to its own user; the test bind-mounts its directories)"
    if not POLKITD.exists():
        return f"{POLKITD} is missing (Debian package polkitd)"
    if dbus_daemon_path() is None:
        return "dbus-daemon is not installed"
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) is not installed"
    try:
        pwd.getpwnam("polkitd")
    except KeyError:
        return "no polkitd user (Debian package polkitd creates it)"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"cannot make a mount namespace: {probe.stderr.strip()[:120]}"
    return None


@dataclass
class Polkit:
    bus: PrivateBus
    process: subprocess.Popen[bytes]


def _world_readable_dir(parent: Path, name: str) -> Path:
    d = parent / name
    d.mkdir()
    d.chmod(0o755)
    return d


@pytest.fixture
def polkit() -> Iterator[Polkit]:
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)
    setpriv_nobody()  # skips when uid 65534 cannot run this checkout's Python
    # polkitd runs as the polkitd user: everything it reads must be world-readable
    base = Path(tempfile.mkdtemp(prefix="kdumpd-polkit-"))
    base.chmod(0o755)
    actions = _world_readable_dir(base, "actions")
    rules = _world_readable_dir(base, "rules")
    empty = _world_readable_dir(base, "empty")
    shutil.copy(POLICY, actions / POLICY.name)
    (actions / POLICY.name).chmod(0o644)
    (rules / "50-kdumpd-test.rules").write_text(RULES)
    (rules / "50-kdumpd-test.rules").chmod(0o644)
    bus = start_bus(polkit=True)
    mounts = " && ".join(
        f"mount --bind {src} {dst}"
        for src, dst in (
            (actions, "/usr/share/polkit-1/actions"),
            (rules, "/etc/polkit-1/rules.d"),
            (empty, "/usr/share/polkit-1/rules.d"),
        )
    )
    log = base / "polkitd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"{mounts} && exec {POLKITD}",
            ],
            env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus.address},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_name(bus.address, POLKIT_NAME, proc, log)
        yield Polkit(bus, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        bus.stop()
        shutil.rmtree(base, ignore_errors=True)


def _wait_for_name(address: str, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    end = time.monotonic() + 15
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"polkitd exited ({proc.returncode}): {log.read_text()[-2000:]}")
        got = subprocess.run(
            ["busctl", f"--address={address}", "status", name],
            capture_output=True,
            text=True,
            check=False,
        )
        if got.returncode == 0:
            return
        time.sleep(0.1)
    pytest.fail(f"polkitd did not own {name}: {log.read_text()[-2000:]}")


@pytest.fixture
async def daemon(polkit: Polkit) -> AsyncIterator[RecordingController]:
    controller = RecordingController()
    service = await serve(polkit.bus.address, StateStore(DaemonState(generation=7)), controller)
    try:
        yield controller
    finally:
        await service.stop()


async def _as(uid: int, address: str, *methods: str) -> dict[str, tuple[str, str]]:
    """Call ``methods`` as ``uid``: method -> (error name or "-", error text)."""
    proc = await asyncio.create_subprocess_exec(
        "setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        sys.executable,
        "-c",
        CLIENT,
        address,
        *methods,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    answers: dict[str, tuple[str, str]] = {}
    for line in out.decode().splitlines():
        method, _kind, error, *text = line.split(" ", 3)
        answers[method] = (error, text[0] if text else "")
    return answers


async def test_polkit_grants_one_uid_one_action(
    polkit: Polkit, daemon: RecordingController
) -> None:
    nobody = await _as(65534, polkit.bus.address, *METHODS)
    assert nobody["Rescan"] == ("-", ""), nobody
    for method in ("Reload", "Load", "Unload", "GetReport"):
        error, text = nobody[method]
        assert error == "org.kdumpd1.Error.AccessDenied", (method, nobody)
        assert f"not authorized for {METHOD_ACTIONS[method]}" in text, text
    assert daemon.calls == ["rescan"]

    other = await _as(1, polkit.bus.address, *METHODS)  # uid 1: no rule for it
    assert all(error == "org.kdumpd1.Error.AccessDenied" for error, _ in other.values()), other
    assert daemon.calls == ["rescan"]

    root = await MessageBus(bus_address=polkit.bus.address).connect()
    try:
        for method in METHODS:
            reply = await root.call(
                Message(destination=BUS_NAME, path=OBJECT_PATH, interface=INTERFACE, member=method)
            )
            assert reply.message_type is MessageType.METHOD_RETURN, (method, reply.body)
    finally:
        root.disconnect()
    assert daemon.calls == ["rescan", "reload", "load", "unload", "rescan", "report"]


async def test_the_policy_file_declares_each_action(polkit: Polkit) -> None:
    """polkitd itself parsed polkit/org.kdumpd1.policy: it lists the three actions with
    auth_admin_keep for active sessions and no otherwise."""
    bus = await MessageBus(bus_address=polkit.bus.address).connect()
    try:
        reply = await bus.call(
            Message(
                destination=POLKIT_NAME,
                path=AUTHORITY_PATH,
                interface="org.freedesktop.PolicyKit1.Authority",
                member="EnumerateActions",
                signature="s",
                body=[""],
            )
        )
    finally:
        bus.disconnect()
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    # (action_id, description, message, vendor, vendor_url, icon, any, inactive, active, a{ss})
    actions = {a[0]: (a[6], a[7], a[8]) for a in reply.body[0]}
    assert set(actions) == set(METHOD_ACTIONS.values())
    # PolkitImplicitAuthorization: 0 not authorized, 4 admin auth kept
    assert all(v == (0, 0, 4) for v in actions.values()), actions
