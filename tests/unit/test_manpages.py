"""The man pages render without groff warnings and document every sub-command."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kdumpd.cli import COMMANDS
from kdumpd.interfaces.kdumpctl import HANDLERS

MAN = Path(__file__).resolve().parents[2] / "docs" / "man"


def _render(page: str) -> str:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    proc = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", str(MAN / page)],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "GROFF_NO_SGR": "1"},
    )
    assert proc.returncode == 0
    assert proc.stderr == "", proc.stderr
    # Undo overstriking (bold/underline) and hyphenation breaks for matching.
    text = proc.stdout
    while "\b" in text:
        i = text.index("\b")
        text = text[: i - 1] + text[i + 1 :]
    return text.replace("\u2010", "-").replace("\u2212", "-")


def test_kdumpctl_page_lists_every_command() -> None:
    text = _render("kdumpctl.8")
    for cmd in HANDLERS:
        assert cmd in text.replace("-\n", "").replace("\n", " "), cmd
    for section in ("EXIT STATUS", "ENVIRONMENT", "FILES", "OPTIONS"):
        assert section in text


def test_kdumpd_page_lists_every_command() -> None:
    text = _render("kdumpd.8")
    for cmd in COMMANDS:
        assert f"\n       {cmd}" in text, cmd
    for section in ("EXIT STATUS", "ENVIRONMENT", "FILES", "CONFIGURATION"):
        assert section in text


def test_kdumpd_page_describes_every_backend() -> None:
    """BACK-ENDS has an entry for each back-end but ``auto``, and CONFIGURATION's
    ``backend`` setting lists them all."""
    from kdumpd.daemon.backends import BACKEND_NAMES

    text = _render("kdumpd.8")
    backends = text[text.index("\nBACK-ENDS") : text.index("\nOPTIONS")]
    for name in BACKEND_NAMES:
        assert f"\n       {name}\n" in backends or f"\n       {name} " in backends, name
    config = " ".join(text[text.index("\nCONFIGURATION") :].split())
    setting = config[config.index("backend (") :]
    setting = setting[: setting.index(")")]
    for name in ("auto", *BACKEND_NAMES):
        assert name in setting, name
