"""PolkitAuthority's question and how its answers map to verdicts; the D-Bus service
asks only for callers other than root, with the caller's interactive flag.  (A real
polkitd: tests/integration/test_polkit.py.)"""

from __future__ import annotations

import asyncio
import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import DBusError, Message, MessageFlag, MessageType

from kdumpd.daemon.state import StateStore
from kdumpd.interfaces import dbus
from kdumpd.interfaces.polkit import (
    ACTION_MANAGE,
    ACTION_REPORT,
    ACTION_RESCAN,
    METHOD_ACTIONS,
    PolkitAuthority,
    Verdict,
)
from tests.unit.daemon_fakes import RecordingController


class FakeBus:
    def __init__(self, *replies: Message | BaseException | None) -> None:
        self.replies = list(replies)
        self.sent: list[Message] = []

    async def call(self, msg: Message) -> Message:
        self.sent.append(msg)
        reply = self.replies.pop(0)
        if reply is None:
            await asyncio.sleep(10)
        if isinstance(reply, BaseException):
            raise reply
        assert isinstance(reply, Message)
        return reply


def answer(authorized: bool, challenge: bool) -> Message:
    return Message(
        message_type=MessageType.METHOD_RETURN,
        reply_serial=1,
        signature="(bba{ss})",
        body=[[authorized, challenge, {}]],
    )


def error(name: str) -> Message:
    return Message(
        message_type=MessageType.ERROR,
        reply_serial=1,
        error_name=name,
        signature="s",
        body=["no"],
    )


def test_one_action_per_kind_of_call() -> None:
    assert METHOD_ACTIONS == {
        "Reload": ACTION_MANAGE,
        "Load": ACTION_MANAGE,
        "Unload": ACTION_MANAGE,
        "Rescan": ACTION_RESCAN,
        "GetReport": ACTION_REPORT,
    }
    assert set(METHOD_ACTIONS) == set(dbus.METHOD_SIGNATURES)


async def test_the_question_names_the_caller_and_interaction_only_when_asked() -> None:
    bus = FakeBus(answer(True, False), answer(True, False))
    auth = PolkitAuthority(lambda: bus)  # type: ignore[arg-type,return-value]
    assert await auth.check(":1.42", ACTION_RESCAN, interactive=False) is Verdict.ALLOWED
    assert await auth.check(":1.42", ACTION_MANAGE, interactive=True) is Verdict.ALLOWED
    quiet, loud = bus.sent
    assert (
        quiet.member == "CheckAuthorization" and quiet.destination == "org.freedesktop.PolicyKit1"
    )
    assert quiet.signature == "(sa{sv})sa{ss}us"
    subject, action, details, flags, cancel = quiet.body
    assert subject[0] == "system-bus-name" and subject[1]["name"].value == ":1.42"
    assert (action, details, flags, cancel) == (ACTION_RESCAN, {}, 0, "")
    assert not quiet.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION
    assert loud.body[1] == ACTION_MANAGE and loud.body[3] == 1
    assert loud.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        (answer(False, False), Verdict.DENIED),
        (answer(False, True), Verdict.CHALLENGE),
        (error("org.freedesktop.PolicyKit1.Error.Failed"), Verdict.DENIED),
        (error("org.freedesktop.DBus.Error.NoReply"), Verdict.DENIED),
        (error("org.freedesktop.DBus.Error.ServiceUnknown"), Verdict.UNAVAILABLE),
        (error("org.freedesktop.DBus.Error.NameHasNoOwner"), Verdict.UNAVAILABLE),
        (error("org.freedesktop.DBus.Error.Spawn.ChildExited"), Verdict.UNAVAILABLE),
        (DBusError("org.freedesktop.DBus.Error.Disconnected", "gone"), Verdict.DENIED),
        (EOFError(), Verdict.DENIED),
        (None, Verdict.DENIED),  # no answer in time
        (Message(message_type=MessageType.METHOD_RETURN, reply_serial=1), Verdict.DENIED),
    ],
)
async def test_anything_but_yes_is_no(reply: Any, verdict: Verdict) -> None:
    bus = FakeBus(reply)
    auth = PolkitAuthority(lambda: bus, timeout=0.05)  # type: ignore[arg-type,return-value]
    assert await auth.check(":1.9", ACTION_REPORT, interactive=False) is verdict


async def test_no_polkit_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    bus = FakeBus(*[error("org.freedesktop.DBus.Error.ServiceUnknown")] * 3)
    auth = PolkitAuthority(lambda: bus)  # type: ignore[arg-type,return-value]
    with caplog.at_level(logging.WARNING, logger="kdumpd.interfaces.polkit"):
        for _ in range(3):
            assert await auth.check(":1.9", ACTION_MANAGE, interactive=False) is Verdict.UNAVAILABLE
    said = [r for r in caplog.records if "not on the bus" in r.message]
    assert len(said) == 1


class RecordingAuthority:
    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        self.asked: list[tuple[str, str, bool]] = []

    async def check(self, sender: str, action: str, *, interactive: bool) -> Verdict:
        self.asked.append((sender, action, interactive))
        return self.verdict


def manager(uid: int, authority: RecordingAuthority | None) -> dbus.ManagerInterface:
    async def lookup(_sender: str) -> int:
        return uid

    return dbus.ManagerInterface(StateStore(), RecordingController(), lookup, authority=authority)


async def _authorize(m: dbus.ManagerInterface, method: str, *, interactive: bool) -> None:
    dbus._current_sender.set(":1.7")
    dbus._current_interactive.set(interactive)
    await m._authorize(method)


async def test_root_is_never_asked_about() -> None:
    auth = RecordingAuthority(Verdict.DENIED)
    await _authorize(manager(0, auth), "Unload", interactive=False)
    assert auth.asked == []


@pytest.mark.parametrize(
    ("verdict", "text"),
    [
        (Verdict.DENIED, "not authorized for org.kdumpd1.manage (polkit)"),
        (Verdict.CHALLENGE, "Unload needs authentication for org.kdumpd1.manage"),
        (Verdict.UNAVAILABLE, "only root may call org.kdumpd1.Manager methods"),
    ],
)
async def test_others_get_what_polkit_says(verdict: Verdict, text: str) -> None:
    auth = RecordingAuthority(verdict)
    with pytest.raises(dbus.AccessDenied, match=re.escape(text)):
        await _authorize(manager(1000, auth), "Unload", interactive=True)
    assert auth.asked == [(":1.7", ACTION_MANAGE, True)]
    allowed = RecordingAuthority(Verdict.ALLOWED)
    await _authorize(manager(1000, allowed), "GetReport", interactive=False)
    assert allowed.asked == [(":1.7", ACTION_REPORT, False)]


async def test_without_an_authority_only_root_may() -> None:
    with pytest.raises(dbus.AccessDenied, match="only root may call"):
        await _authorize(manager(1000, None), "Rescan", interactive=False)


def test_message_handler_records_the_interactive_flag() -> None:
    class _Svc(dbus.DBusService):
        def __init__(self) -> None:  # no bus needed for the handler
            pass

    for flags, want in (
        (MessageFlag.NONE, False),
        (MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION, True),
    ):
        msg = Message(
            destination=dbus.BUS_NAME,
            path=dbus.OBJECT_PATH,
            interface=dbus.INTERFACE,
            member="Reload",
            flags=flags,
        )
        msg.sender = ":1.5"
        assert _Svc().message_handler(msg) is None
        assert dbus._current_interactive.get() is want and dbus._current_sender.get() == ":1.5"


REPO = Path(__file__).resolve().parents[2]


def test_the_policy_file_declares_the_actions_and_make_install_ships_it() -> None:
    root = ET.parse(REPO / "polkit" / "org.kdumpd1.policy").getroot()
    defaults = {
        a.get("id"): {d.tag: d.text for d in a.iterfind("defaults/*")} for a in root.iter("action")
    }
    assert set(defaults) == set(METHOD_ACTIONS.values())
    for got in defaults.values():
        assert got == {"allow_any": "no", "allow_inactive": "no", "allow_active": "auth_admin_keep"}
    makefile = (REPO / "Makefile").read_text()
    assert "polkit/org.kdumpd1.policy" in makefile
    assert "/usr/share/polkit-1/actions/org.kdumpd1.policy" in makefile


def test_the_docs_name_every_action_and_metric() -> None:
    from kdumpd.daemon.state import DaemonState
    from kdumpd.interfaces.metrics import metric_families

    names = {
        s.name
        for f in metric_families(
            DaemonState(), crash_loaded=True, load_limit_panic=-1, no_image_state_seconds=0
        )
        for s in f.samples
    }
    man = (REPO / "docs/man/kdumpd.8").read_text().replace("\\-", "-")
    api = (REPO / "docs/dbus-api.md").read_text()
    for name in sorted(names | set(METHOD_ACTIONS.values())):
        assert name in man, name
        assert name in api, name
