from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kdumpd import cli


def test_no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == cli.EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


def test_unknown_option_exits_2_with_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kdumpd.cli", "inspect", "--no-such-option"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_every_command_has_help() -> None:
    parser = cli.build_parser()
    text = parser.format_help()
    for name in cli.COMMANDS:
        assert name in text


FIXTURE = str(Path(__file__).resolve().parents[1] / "fixtures/guest-6.1-after")


def test_absurd_buffer_size_is_a_usage_error_not_memoryerror(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["elfcorehdr", "--sysroot", FIXTURE, "--max-cpus", "99999999999", "-o", "x"]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "--max-cpus: more than" in err and len(err.strip().splitlines()) == 1


def test_bogus_log_level_is_a_warning(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KDUMPD_LOG_LEVEL", "chatty")
    assert cli.main(["inspect", "--sysroot", FIXTURE]) == cli.EXIT_OK
    assert "KDUMPD_LOG_LEVEL=CHATTY is not a log level" in capsys.readouterr().err


def test_a_bug_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdumpd.commands import inspect

    def boom(_args: object) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(inspect, "run", boom)
    assert cli.main(["inspect", "--sysroot", FIXTURE]) == cli.EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.strip() == (
        "kdumpd inspect: internal error: ZeroDivisionError: division by zero"
        " (run with -vv for the traceback)"
    )


def test_every_dbus_error_name_maps_back_to_a_client_class() -> None:
    """Server: error class -> org.kdumpd1.Error.*; client: that name -> a class."""
    from kdumpd.core.errors import InputError, KdumpdError
    from kdumpd.daemon.control import Busy
    from kdumpd.interfaces.dbus import ERRORS, AccessDenied, error_name
    from kdumpd.interfaces.dbusclient import ERROR_CLASSES, DaemonBusy, DaemonFailed

    assert {name for _cls, name in ERRORS} == set(ERROR_CLASSES)
    assert ERROR_CLASSES[error_name(Busy("Load", "reload"))] is DaemonBusy
    assert ERROR_CLASSES[error_name(InputError("/etc/kdumpd.toml", "bad"))] is DaemonFailed
    assert error_name(AccessDenied("no")) == "org.kdumpd1.Error.AccessDenied"
    assert error_name(KdumpdError("x")) == "org.kdumpd1.Error.Failed"
