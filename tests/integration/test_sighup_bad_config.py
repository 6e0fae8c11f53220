"""SIGHUP with a configuration Python cannot even parse (invalid UTF-8, a
5,000-digit integer): one log line naming the file, no traceback, the daemon keeps
its configuration and image."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from tests.integration.test_run_daemon import env, recv_until, start

__all__ = ["env"]  # the fixture, re-exported for pytest


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'backend = "dry-run"\n[debounce]\nquiet_ms = 2\xff0\n', "not valid UTF-8"),
        (b"[debounce]\nquiet_ms = " + b"9" * 5000 + b"\n", "Exceeds the limit"),
    ],
    ids=["invalid-utf8", "huge-int"],
)
def test_sighup_with_an_unparsable_config_logs_one_line(
    env: tuple[dict[str, str], socket.socket, Path], raw: bytes, needle: str
) -> None:
    e, sock, tmp = env
    cfg = tmp / "kdumpd.toml"
    cfg.write_text("[debounce]\nquiet_ms = 20\n")
    p = start(e, tmp, "--config", str(cfg))
    try:
        recv_until(sock, "READY=1")
        cfg.write_bytes(raw)
        p.send_signal(signal.SIGHUP)
        recv_until(sock, "READY=1")
        assert p.poll() is None
        p.send_signal(signal.SIGTERM)
        _out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if str(cfg) in line]
    assert len(lines) == 1, err
    assert needle in lines[0] and "keeping the running configuration" in lines[0]
