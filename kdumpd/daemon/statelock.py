"""One daemon per state directory: an exclusive ``flock(2)`` on ``<state_dir>/lock``.

Two daemons on one state directory would both write ``state.json`` (and, with the
dry-run back-end, ``loads/``), each adopting or overwriting the other's record.
The lock is taken before anything else and held for the daemon's lifetime; the
kernel drops it when the process exits, however it exits, so a stale lock file
never blocks a restart.  The file holds the owner's pid, for the error message.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from kdumpd.core.errors import KdumpdError

LOCK_FILE = "lock"


class StateDirBusy(KdumpdError):
    """Another process holds the state directory's lock."""


class StateDirLock:
    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`StateDirBusy` (one line, with the other
        daemon's pid) / :class:`KdumpdError` (the directory is unusable)."""
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise KdumpdError(f"{self.path}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            other = _read_pid(fd)
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                who = f"pid {other}" if other else "another process"
                raise StateDirBusy(
                    f"{self.dir}: another kdumpd ({who}) already runs on this state "
                    "directory (one daemon per state directory; pass --state-dir)"
                ) from None
            raise KdumpdError(f"{self.path}: cannot lock: {err.strerror or err}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is only for the message; the lock is what counts
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None

    def __enter__(self) -> StateDirLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isascii() and text.isdigit() and len(text) < 11 else None
