"""The event source names: ``netlink`` (the kernel's own uevents) and ``udev``;
``kernel``, pyudev's name for the netlink group, is a deprecated alias of ``netlink``
(``kernel`` is the name of a back-end)."""

from __future__ import annotations

import argparse
import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from kdumpd.commands import run
from kdumpd.config import load_settings
from kdumpd.events.udev import UdevSource, choose_source

DEPRECATED = "deprecated"


def _config(tmp_path: Path, source: str) -> Path:
    p = tmp_path / "kdumpd.toml"
    p.write_text(f'event_source = "{source}"\n')
    return p


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("source", ["auto", "udev", "netlink"])
def test_every_current_name_is_accepted_without_a_warning(
    tmp_path: Path, source: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kdumpd")
    assert load_settings(_config(tmp_path, source), env={}).event_source == source
    p = _config(tmp_path, "udev")
    assert load_settings(p, {"event_source": source}, env={}).event_source == source
    assert load_settings(p, env={"KDUMPD_EVENT_SOURCE": source}).event_source == source
    assert not [m for m in _warnings(caplog) if DEPRECATED in m]


def test_the_old_name_kernel_in_the_file_is_read_as_netlink_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = _config(tmp_path, "kernel")
    caplog.set_level(logging.INFO, logger="kdumpd")
    assert load_settings(p, env={}).event_source == "netlink"
    (msg,) = _warnings(caplog)
    assert msg == f"{p}: event source 'kernel' is deprecated, read as 'netlink'"


@pytest.mark.parametrize(
    ("overrides", "env", "where"),
    [
        ({"event_source": "kernel"}, {}, "command line"),
        ({}, {"KDUMPD_EVENT_SOURCE": "kernel"}, "KDUMPD_EVENT_SOURCE"),
    ],
)
def test_the_old_name_from_the_command_line_or_environment_names_where_it_came_from(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    overrides: dict[str, Any],
    env: dict[str, str],
    where: str,
) -> None:
    caplog.set_level(logging.INFO, logger="kdumpd")
    s = load_settings(_config(tmp_path, "udev"), overrides, env=env)
    assert s.event_source == "netlink"
    (msg,) = _warnings(caplog)
    assert msg.startswith(f"{where}: event source 'kernel' is deprecated")


def test_an_overridden_old_name_in_the_file_is_not_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning is about the value in effect: a file that still says ``kernel``
    under ``--event-source udev`` runs on udev."""
    caplog.set_level(logging.INFO, logger="kdumpd")
    s = load_settings(_config(tmp_path, "kernel"), {"event_source": "udev"}, env={})
    assert s.event_source == "udev" and not _warnings(caplog)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_cli_takes_netlink_and_still_the_old_name() -> None:
    assert run.overrides_from(_parse("--event-source", "netlink"))["event_source"] == "netlink"
    assert run.overrides_from(_parse("--event-source", "kernel"))["event_source"] == "kernel"
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    assert "{auto,udev,netlink}" in parser.format_help()


def test_choose_source() -> None:
    assert choose_source("netlink") == "netlink"
    assert choose_source("udev") == "udev"
    assert choose_source("auto", udev_control="/nonexistent/udev/control") == "netlink"
    assert choose_source("auto", udev_control=__file__) == "udev"
    with pytest.raises(ValueError, match="unknown event source 'kernel'"):
        choose_source("kernel")  # the alias is the configuration's business


class _Loop:
    def add_reader(self, _fd: int, _callback: object) -> None:
        pass


@pytest.mark.parametrize(("source", "pyudev_source"), [("netlink", "kernel"), ("udev", "udev")])
def test_the_monitor_is_opened_on_pyudevs_name_of_the_group(
    monkeypatch: pytest.MonkeyPatch, source: str, pyudev_source: str
) -> None:
    opened: list[str] = []

    class Monitor:
        @staticmethod
        def from_netlink(_ctx: object, source: str) -> Monitor:
            opened.append(source)
            return Monitor()

        def filter_by(self, _subsystem: str) -> None:
            pass

        def set_receive_buffer_size(self, _size: int) -> None:
            pass

        def start(self) -> None:
            pass

        def fileno(self) -> int:
            return 0

    fake = types.ModuleType("pyudev")
    fake.Context = object  # type: ignore[attr-defined]
    fake.Monitor = Monitor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyudev", fake)
    src = UdevSource(lambda _ev: None, source=source)
    src.start(_Loop())  # type: ignore[arg-type]
    assert opened == [pyudev_source] and src.source == source
