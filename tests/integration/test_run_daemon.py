"""`kdumpd run` as a real process: sd_notify, watchdog, SIGHUP, SIGTERM, adoption."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests/fixtures/guest-6.1-before"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[dict[str, str], socket.socket, Path]]:
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(20)
    e = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    e.update(NOTIFY_SOCKET=str(path), PYTHONPATH=str(REPO))
    yield e, sock, tmp_path
    sock.close()


def start(e: dict[str, str], tmp: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kdumpd.interfaces.cli",
            "run",
            "--sysroot",
            str(tmp / "root"),
            "--state-dir",
            str(tmp / "state"),
            "--backend",
            "dry-run",
            "--no-dbus",
            *extra,
        ],
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def recv_until(sock: socket.socket, needle: str, limit: float = 20) -> list[str]:
    got: list[str] = []
    end = time.monotonic() + limit
    while time.monotonic() < end:
        msg = sock.recv(4096).decode()
        got.append(msg)
        if needle in msg:
            return got
    raise AssertionError(f"{needle!r} not received; got {got}")


def loads(tmp: Path) -> list[dict[str, object]]:
    lines = (tmp / "state/loads.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def test_ready_watchdog_sighup_sigterm_and_adoption(
    env: tuple[dict[str, str], socket.socket, Path],
) -> None:
    e, sock, tmp = env
    cfg = tmp / "kdumpd.toml"
    cfg.write_text("[debounce]\nquiet_ms = 20\n")
    e2 = dict(e, WATCHDOG_USEC="200000")
    p = start(e2, tmp, "--config", str(cfg))
    try:
        msgs = recv_until(sock, "READY=1")
        assert "gen 1" in msgs[-1] and "loaded" in msgs[-1]
        recv_until(sock, "WATCHDOG=1", limit=2)
        # a broken config on SIGHUP: the running one is kept, the daemon stays up
        cfg.write_text("[debounce]\nquiet_ms = 'soon'\n")
        p.send_signal(signal.SIGHUP)
        recv_until(sock, "READY=1")
        assert p.poll() is None
        # a good config on SIGHUP: reloads the image (one more load)
        cfg.write_text("[debounce]\nquiet_ms = 30\n")
        p.send_signal(signal.SIGHUP)
        recv_until(sock, "gen 2")
        p.send_signal(signal.SIGTERM)
        _out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    assert "keeping the running configuration" in err and str(cfg) in err
    assert "Traceback" not in err
    assert [x.get("load") for x in loads(tmp)] == [1, 2]
    # restart: the recorded image is adopted, no new load
    sock.setblocking(False)
    while True:
        try:
            sock.recv(4096)
        except BlockingIOError:
            break
    sock.settimeout(20)
    p = start(e, tmp)
    try:
        msgs = recv_until(sock, "READY=1")
        assert "gen 2" in msgs[-1]
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert "adopting the loaded crash image of generation 2" in err
    assert [x.get("load") for x in loads(tmp)] == [1, 2]


def test_bad_config_is_one_line_exit_1(env: tuple[dict[str, str], socket.socket, Path]) -> None:
    e, _, tmp = env
    cfg = tmp / "bad.toml"
    cfg.write_text('event_source = "warp"\n')
    p = start(e, tmp, "--config", str(cfg))
    _, err = p.communicate(timeout=20)
    assert p.returncode == 1
    assert err.count("\n") == 1 and f"{cfg}: event_source:" in err
