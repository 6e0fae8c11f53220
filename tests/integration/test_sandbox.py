"""What the unit's sandbox (systemd/kdumpd.service) relies on, checked on this kernel:

- ``PrivateNetwork=yes``: the kernel broadcasts device uevents into every network
  namespace owned by the initial user namespace, so kdumpd's ``netlink`` event source
  still hears a real uevent from a fresh network namespace;
- ``MemoryDenyWriteExecute=yes``: the daemon (pyudev, dbus-fast, libfdt, the journal,
  a whole replay) runs with write+execute mappings refused (``PR_SET_MDWE``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests/fixtures/guest-6.1-before"
UEVENT = Path("/sys/devices/system/cpu/cpu0/uevent")

_LISTEN_IN_NEW_NETNS = r"""
import asyncio, ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
    sys.exit(f"unshare: errno {ctypes.get_errno()}")
from kdumpd.events.udev import UdevSource

async def main() -> None:
    got = asyncio.get_running_loop().create_future()
    source = UdevSource(lambda ev: got.done() or got.set_result(ev), source="netlink")
    source.start()
    print("listening", flush=True)
    ev = await asyncio.wait_for(got, 10)
    print(f"{ev.action} {ev.subsystem} {ev.devpath}", flush=True)
    source.stop()

asyncio.run(main())
"""


def test_kernel_uevents_reach_a_private_network_namespace() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: unshare(CLONE_NEWNET) and writing a sysfs uevent file")
    if not os.access(UEVENT, os.W_OK):
        pytest.skip(f"{UEVENT} is not writable here (read-only sysfs)")
    child = subprocess.Popen(
        [sys.executable, "-c", _LISTEN_IN_NEW_NETNS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "listening"
        # A synthetic "change" uevent, sent by the kernel.  The distributions' kdump
        # udev rules act on cpu add/remove and memory online/offline only.
        UEVENT.write_text("change")
        out, err = child.communicate(timeout=15)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    assert out.strip() == "change cpu /devices/system/cpu/cpu0"


_UNDER_MDWE = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
import dbus_fast.aio, libfdt, pyudev
from systemd import journal
mon = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
mon.filter_by("cpu")
mon.start()
from kdumpd.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_daemon_runs_with_write_execute_mappings_refused(tmp_path: Path) -> None:
    from kdumpd.events.storm import write_memory_storm

    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    write_memory_storm(root, tmp_path / "storm.jsonl", blocks=20)
    args = ["replay", str(tmp_path / "storm.jsonl"), "--sysroot", str(root)]
    args += ["--backend", "dry-run", "--state-dir", str(tmp_path / "s")]
    proc = subprocess.run(
        [sys.executable, "-c", _UNDER_MDWE, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if proc.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert proc.returncode == 0, proc.stderr
    assert "events_delivered           20" in proc.stdout
