"""Running project code as an unprivileged uid (65534) for policy tests."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

import pytest

NOBODY = ("--reuid=65534", "--regid=65534", "--clear-groups")


@functools.cache
def _probe() -> str | None:
    """None when uid 65534 can run this interpreter and import kdumpd, else why not."""
    if os.geteuid() != 0:
        return "needs root to drop to uid 65534"
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return "setpriv (util-linux) is not installed"
    proc = subprocess.run(
        [setpriv, *NOBODY, sys.executable, "-c", "import kdumpd"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return f"uid 65534 cannot run {sys.executable} (checkout not world-readable?): {last}"
    return None


def setpriv_nobody() -> list[str]:
    """``setpriv`` argv prefix for uid 65534; skips the test (with the reason) when the
    checkout or its venv is not reachable by that uid, e.g. a checkout under /root."""
    reason = _probe()
    if reason is not None:
        pytest.skip(reason)
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    return [setpriv, *NOBODY]
