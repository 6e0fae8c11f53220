"""One daemon per state directory, and a captured sysroot hears no host uevents."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from kdumpd.daemon.statelock import StateDirBusy, StateDirLock
from tests.integration.test_run_daemon import env, recv_until, start

__all__ = ["env"]  # the fixture, re-exported for pytest


def test_a_second_daemon_on_the_same_state_directory_is_refused_with_one_line(
    env: tuple[dict[str, str], socket.socket, Path],
) -> None:
    e, sock, tmp = env
    first = start(e, tmp)
    try:
        recv_until(sock, "READY=1")
        second = start(e, tmp)
        _out, err = second.communicate(timeout=30)
        assert second.returncode == 1
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert f"another kdumpd (pid {first.pid}) already runs" in lines[0]
        assert str(tmp / "state") in lines[0]
        assert first.poll() is None  # the first one is untouched
        first.send_signal(signal.SIGTERM)
        _out, err = first.communicate(timeout=20)
        assert first.returncode == 0, err
        # the lock went with the process: a restart on the same directory works
        third = start(e, tmp)
        recv_until(sock, "READY=1")
        third.send_signal(signal.SIGTERM)
        _out, err = third.communicate(timeout=20)
        assert third.returncode == 0, err
    finally:
        for p in (first,):
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_state_dir_lock_in_process(tmp_path: Path) -> None:
    with StateDirLock(tmp_path / "s"):
        try:
            StateDirLock(tmp_path / "s").acquire()
        except StateDirBusy as err:
            assert "already runs on this state directory" in str(err)
        else:
            raise AssertionError("second lock granted")
    StateDirLock(tmp_path / "s").acquire()  # released on exit


def test_a_captured_sysroot_does_not_listen_to_this_machines_uevents(
    env: tuple[dict[str, str], socket.socket, Path],
) -> None:
    e, sock, tmp = env
    p = start(e, tmp)
    try:
        recv_until(sock, "READY=1")
        p.send_signal(signal.SIGTERM)
        _out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert "is not the running system: not listening" in err
    assert "listening for cpu/memory uevents" not in err
