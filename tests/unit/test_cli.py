from __future__ import annotations

import subprocess
import sys

import pytest

from kdumpd.interfaces import cli


def test_no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == cli.EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


def test_unknown_option_exits_2_with_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kdumpd.interfaces.cli", "inspect", "--no-such-option"],
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
