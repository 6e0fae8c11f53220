"""Hotplug actions on a running guest: QMP device_add/device_del plus what udev
would do in the guest (write 1 to cpuN/online)."""

from __future__ import annotations

import os
import time

from tests.e2e.guest import Guest, GuestError, parse_cpulist

CPU = "/sys/devices/system/cpu"


def present_cpus(g: Guest) -> list[int]:
    return parse_cpulist(g.read(f"{CPU}/present"))


def add_cpu(g: Guest, dev_id: str, *, online: bool = True, timeout: float = 120.0) -> int:
    """Hot-add one CPU; wait until the guest sees it; online it like udev would.
    Returns the guest CPU number."""
    assert g.qmp is not None
    if g.cpu_hotplug == "logical":
        offline = sorted(set(present_cpus(g)) - set(g.online_cpus()))
        if not offline:
            raise GuestError("no present, offline CPU left to online", g.tail(5))
        g.check(f"echo 1 > {CPU}/cpu{offline[0]}/online", timeout=timeout)
        return offline[0]
    before = set(present_cpus(g))
    g.qmp.add_cpu(dev_id)
    deadline = time.monotonic() + timeout
    while True:
        new = set(present_cpus(g)) - before
        if new:
            cpu = min(new)
            break
        if time.monotonic() > deadline:
            raise GuestError(f"hot-added CPU {dev_id} never appeared", g.tail(15))
        time.sleep(0.2)
    if online:
        g.check(f"echo 1 > {CPU}/cpu{cpu}/online", timeout=timeout)
    return cpu


def remove_cpu(g: Guest, dev_id: str, cpu: int, timeout: float = 120.0) -> None:
    """Offline (as udev/user space would before ejecting) and unplug a CPU."""
    assert g.qmp is not None
    g.run(f"echo 0 > {CPU}/cpu{cpu}/online", timeout=timeout)
    if g.cpu_hotplug == "logical" or os.environ.get("KDUMPD_E2E_CPU_UNPLUG", "0") != "1":
        # QEMU 7.2 (TCG) corrupts its heap ("corrupted size vs. prev_size") when the
        # guest panics and kexecs after a CPU was device_del'ed: by default a
        # "removed" CPU is offlined (its uevent and crash-notes effect are the same
        # for the loaded image) but stays plugged.  KDUMPD_E2E_CPU_UNPLUG=1 unplugs.
        return
    g.qmp.device_del(dev_id)
    deadline = time.monotonic() + timeout
    while cpu in present_cpus(g):
        if time.monotonic() > deadline:
            raise GuestError(f"CPU {cpu} ({dev_id}) was never removed", g.tail(15))
        time.sleep(0.2)


def add_dimm(
    g: Guest, dev_id: str, size: int, *, wait: bool = True, timeout: float = 120.0
) -> None:
    assert g.qmp is not None
    before = len(g.system_ram()) if wait else 0
    total_before = sum(b - a + 1 for a, b in g.system_ram()) if wait else 0
    g.qmp.add_dimm(dev_id, size)
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while True:
        ram = g.system_ram()
        if sum(b - a + 1 for a, b in ram) >= total_before + size or len(ram) > before + 1:
            return
        if time.monotonic() > deadline:
            raise GuestError(f"DIMM {dev_id} never showed up as System RAM", g.tail(15))
        time.sleep(0.2)


def remove_dimm(g: Guest, dev_id: str, size: int, timeout: float = 120.0) -> None:
    assert g.qmp is not None
    total_before = sum(b - a + 1 for a, b in g.system_ram())
    g.qmp.device_del(dev_id)
    deadline = time.monotonic() + timeout
    while sum(b - a + 1 for a, b in g.system_ram()) > total_before - size:
        if time.monotonic() > deadline:
            raise GuestError(f"DIMM {dev_id} was never removed", g.tail(15))
        time.sleep(0.2)
