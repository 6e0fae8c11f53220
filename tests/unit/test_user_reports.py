"""Smaller things a new user met (issue 12, item 6): each test failed before its fix."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from kdumpd.events.storm import system_ram, write_memory_storm

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests/fixtures/guest-6.1-before"


def test_the_readme_storm_really_resizes_32_to_512_gib(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    cmd = re.search(r"w\(\"/dev/shm/root\", \"/tmp/storm.jsonl\"(.*?)\)'", readme)
    assert cmd is not None and "base_gib=32" in cmd.group(1)
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    n = write_memory_storm(root, tmp_path / "storm.jsonl", base_gib=32)
    assert n == 3840
    start = system_ram((root / "proc/iomem").read_text())
    last = json.loads((tmp_path / "storm.jsonl").read_text().splitlines()[-1])
    end = system_ram(last["files"]["proc/iomem"])
    assert round(start / 2**30, 3) == 32.0
    assert round(end / 2**30, 3) == 512.0


def test_pyproject_license_is_an_spdx_string() -> None:
    """A license table prints setuptools' deprecation warning on every install."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "GPL-2.0-or-later"
    assert "setuptools>=77" in project["build-system"]["requires"]


# ------------------------------------------------------------------ kdumpd status

_LOADED = {
    "state": "loaded",
    "generation": 2,
    "last_update_usec": 1_763_700_000_000_000,
    "last_update_duration_usec": 1500,
    "present_cpus": [0, 1],
    "covered_cpus": [0, 1],
    "memory_ranges": [[0x1000, 0x9FFFF], [0x100000, 0x3FFFFFFF]],
    "covered_ranges": [[0x1000, 0x9FFFF], [0x100000, 0x3FFFFFFF]],
}


def test_status_of_a_daemon_that_never_applied_an_image() -> None:
    from kdumpd.commands.status import exit_code, format_state

    s = {"state": "failed", "last_update_usec": 0, "last_update_duration_usec": 0}
    text = format_state(s)
    assert "Active: failed (no image applied yet)" in text
    assert "since never" not in text and "took 0 us" not in text
    assert "Last update: none" in text
    assert exit_code(s) == 3


def test_status_never_reports_a_stale_image_as_fully_covered() -> None:
    from kdumpd.commands.status import exit_code, format_state

    assert exit_code(_LOADED) == 0
    assert "Memory: 2/2 ranges covered" in format_state(_LOADED)
    # a degraded daemon: RAM grew, the image still describes the old ranges
    stale = dict(
        _LOADED,
        state="degraded",
        stale=True,
        memory_ranges=[*_LOADED["memory_ranges"], [0x100000000, 0x13FFFFFFF]],  # type: ignore[list-item]
    )
    text = format_state(stale)
    assert "Memory: 2/3 ranges covered, 1023.6 MiB of 2 GiB" in text
    assert "Stale: yes" in text and "○" in text
    assert exit_code(stale) == 4
    # stale with the same ranges (a burst pending): still not "ok"
    assert exit_code(dict(_LOADED, stale=True)) == 4


def test_verbose_is_accepted_after_the_sub_command() -> None:
    from kdumpd.cli import build_parser

    args = build_parser().parse_args(["-v", "inspect", "-vv", "--sysroot", "/x"])
    assert args.verbose + args.sub_verbose == 3


def test_status_bus_address_error_names_that_address(tmp_path: Path) -> None:
    from kdumpd.interfaces.dbusclient import DaemonUnreachable, get_state

    address = f"unix:path={tmp_path}/nobus"
    try:
        get_state(bus_address=address, timeout=3.0)
    except DaemonUnreachable as err:
        assert f"cannot connect to D-Bus at {address}" in str(err)
        assert "system bus" not in str(err)
    else:
        raise AssertionError("connected to a bus that does not exist")


def test_policy_refusal_is_one_clear_line() -> None:
    from dbus_fast import Message, MessageType

    from kdumpd.interfaces.dbusclient import DaemonAccessDenied, _check

    reply = Message.new_error(
        Message(destination="org.kdumpd1", path="/org/kdumpd1", member="Reload", serial=1),
        "org.freedesktop.DBus.Error.AccessDenied",
        'Rejected send message, 2 matched rules; type="method_call", sender=":1.9" ...',
    )
    assert reply.message_type is MessageType.ERROR
    try:
        _check(reply)
    except DaemonAccessDenied as err:
        assert err.text == "permission denied: only root may call org.kdumpd1.Manager methods"
    else:
        raise AssertionError("no error")


def test_kdumpctl_refused_by_the_daemon_is_one_line_and_exit_1(
    monkeypatch: object, capsys: object
) -> None:
    """start/stop/reload/restart as a caller the daemon refuses (not root, polkit says
    no): one line, exit 1; start no longer says "already running" with exit 0."""
    import pytest

    from kdumpd.interfaces import kdumpctl
    from kdumpd.interfaces.dbusclient import DaemonAccessDenied

    mp: pytest.MonkeyPatch = monkeypatch  # type: ignore[assignment]
    cap: pytest.CaptureFixture[str] = capsys  # type: ignore[assignment]
    calls: list[str] = []

    def refuse(member: str, **_kw: object) -> None:
        calls.append(member)
        raise DaemonAccessDenied(
            "org.kdumpd1.Error.AccessDenied", "not authorized for org.kdumpd1.manage (polkit)"
        )

    mp.setattr(kdumpctl, "call", refuse)
    mp.setattr(kdumpctl, "_daemon_state", lambda _ctx: {"state": "loaded"})
    for command in ("start", "stop", "reload", "restart"):
        assert kdumpctl.main(["--bus-address", "unix:path=/nonexistent", command]) == 1
        out, err = cap.readouterr()
        lines = (out + err).strip().splitlines()
        assert lines == [
            f"kdump: {command}: permission denied: not authorized for org.kdumpd1.manage (polkit)"
        ], lines
    assert calls == ["Load", "Unload", "Reload", "Reload"]
    # allowed, and an image is loaded: Load loads nothing, start says so
    mp.setattr(kdumpctl, "call", lambda member, **_kw: calls.append(member))
    assert kdumpctl.main(["--bus-address", "unix:path=/nonexistent", "start"]) == 0
    assert "Kdump already running: [WARNING]" in cap.readouterr().err
