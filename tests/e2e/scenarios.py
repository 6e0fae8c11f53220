"""The e2e scenarios: each boots a guest, loads a crash kernel (kexec-tools, the
udev-style reloader or ``kdumpd run``), hot-plugs, crashes, and compares what was
online at the crash with what the vmcore contains."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e import hotplug, initramfs, kernels, pyroot, vmcore
from tests.e2e.guest import (
    CAPTURE_APPEND,
    Guest,
    GuestError,
    capture_append,
    cpu_hotplug_mode,
    iomem_ranges,
    parse_cpulist,
)

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "tests" / "e2e" / "guest_agent.py"
KDUMPD = REPO / ".venv" / "bin" / "kdumpd"
PY = "/usr/bin/python3"
MiB = 1 << 20
LOW_1M = 1 << 20

DAEMON_FIELDS = (
    "state",
    "backend",
    "backend_reason",
    "generation",
    "events_received",
    "events_coalesced",
    "loads",
    "last_load_gap_usec",
    "load_gaps_usec",
    "last_update_usec",
    "last_update_duration_usec",
    "stale",
    "kernel_hotplug_support",
    "last_error",
)

BURST_DIMMS = int(os.environ.get("KDUMPD_E2E_BURST_DIMMS", "48"))
# The kdump initrd every row loads, padded with NULs to this many MiB (0: as built):
# a distribution's kdump initrd is 30-60 MiB, and what a load costs grows with it.
INITRD_MB = int(os.environ.get("KDUMPD_E2E_INITRD_MB", "0"))
# load-race: a kdump-sized initrd makes kdumpd's own kexec_file_load long enough for a
# DIMM to come online while it runs (the kernel then skips its in-place update).
RACE_INITRD_MB = int(os.environ.get("KDUMPD_E2E_RACE_INITRD_MB", "48"))
RACE_ATTEMPTS = int(os.environ.get("KDUMPD_E2E_RACE_ATTEMPTS", "6"))
# seconds from the daemon's "configuration re-read" line to the DIMM's device_add,
# tried in this order until the guest kernel logs the skipped update
RACE_DELAYS = tuple(
    float(x) for x in os.environ.get("KDUMPD_E2E_RACE_DELAYS", "0.6 1.0 0.3 1.4 0.8 1.8").split()
)
TRYLOCK_LINE = "kexec_trylock() failed"
RACE_REASON = "changed while the load syscall held the kexec lock"
PIDFILE = "/run/kdumpd-e2e.pid"
BURST_DIMM_MB = int(os.environ.get("KDUMPD_E2E_BURST_DIMM_MB", "256"))
# ppc64le under TCG is several times slower: a smaller default burst (pseries LMBs
# are 256 MiB, so DIMMs are multiples of it).
BURST_DIMMS_PPC64LE = int(os.environ.get("KDUMPD_E2E_BURST_DIMMS_PPC64LE", "12"))


def burst_dimms(arch: str) -> int:
    return BURST_DIMMS_PPC64LE if arch == "ppc64le" else BURST_DIMMS


@dataclass
class Result:
    kernel: str
    scenario: str
    backend: str
    arch: str = "x86_64"
    release: str = ""
    expect: str = "complete"  # "complete", "stale", "dump" or "refused" (no capture kernel)
    cpus_online: list[int] = field(default_factory=list)
    prstatus_cpus: list[int] = field(default_factory=list)  # note order indices
    prstatus_pids: list[int] = field(default_factory=list)
    ram_ranges: list[list[str]] = field(default_factory=list)  # System RAM - crashkernel
    vmcore_ranges: list[list[str]] = field(default_factory=list)
    missing_ranges: list[list[str]] = field(default_factory=list)
    missing_mb: float = 0.0
    extra_ranges: list[list[str]] = field(default_factory=list)
    extra_mb: float = 0.0
    vmcore_size: int = 0
    complete: bool = False
    passed: bool = False
    events: int | None = None  # hotplug events the loader saw (daemon) / acted on (udev)
    uevents: int | None = None  # cpu+memory uevents the guest kernel sent (sampler)
    loads: int | None = None
    settle_ms: float | None = None
    no_image_ms: float | None = None
    no_image_gaps: int | None = None
    crash_cpu: int | None = None  # the CPU the panic ran on (ppc64le: taskset), None: any
    dump: bool = False  # the capture kernel booted and reported a vmcore
    # ppc64le: the capture kernel's /proc/device-tree/cpus (the crash FDT it booted with)
    capture_dt_cpus: list[str] = field(default_factory=list)
    boot_s: float = 0.0
    duration_s: float = 0.0
    error: str = ""
    requested_backend: str = "auto"  # what the daemon was configured with
    # The capture kernel's elfcorehdr= (from its /proc/cmdline) and whether it is the
    # address kdumpd placed its own header at (segment back-end): the capture kernel
    # read kdumpd's elfcorehdr, not one the kernel built.
    elfcorehdr_addr: str = ""
    elfcorehdr_ours: bool | None = None
    # The capture kernel was started through kdumpd's purgatory (segment back-end).
    purgatory_entered: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _hex(r: tuple[int, int]) -> list[str]:
    return [f"{r[0]:#x}", f"{r[1]:#x}"]


# -- guest-side helpers -------------------------------------------------------------------


def _chroot(cmd: str) -> str:
    """A busybox command line running ``cmd`` with sh inside chroot /host."""
    q = cmd.replace("'", "'\\''")
    return f"chroot /host /bin/sh -c '{q}'"


def kdumpd_cmd(g: Guest) -> str:
    """How the guest runs the checkout's kdumpd (inside chroot /host)."""
    if g.arch == "ppc64le":
        return "env PYTHONPATH=/src python3 -m kdumpd.cli"
    return str(KDUMPD)


def start_sampler(g: Guest) -> None:
    agent = g.guest_path(AGENT)
    g.spawn(_chroot(f"{PY} {agent} sample /mnt/sampler.jsonl & echo $! > /run/sampler.pid; wait"))
    _wait_file_line(g, g.outdir / "sampler.jsonl", "start")


def stop_sampler(g: Guest) -> list[dict[str, Any]]:
    g.check("kill -TERM $(cat /host/run/sampler.pid)")
    _wait_file_line(g, g.outdir / "sampler.jsonl", "summary")
    return _jsonl(g.outdir / "sampler.jsonl")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _wait_file_line(g: Guest, path: Path, kind: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r.get("kind") == kind for r in _jsonl(path)):
            return
        time.sleep(0.2)
    raise GuestError(f"no {kind!r} record in {path.name} after {timeout:.0f}s", g.tail(15))


def kexec_tools_load(g: Guest, kern: kernels.Kernel, ird: Path) -> None:
    k, i, a = g.guest_path(kern.vmlinuz), g.guest_path(ird), capture_append(g.arch)
    g.host(f"kexec -p {k} --initrd={i} --append='{a}'")


def start_udev_reloader(g: Guest, kern: kernels.Kernel, ird: Path) -> None:
    k, i, a = g.guest_path(kern.vmlinuz), g.guest_path(ird), capture_append(g.arch)
    g.spawn(_chroot(f"{PY} {g.guest_path(AGENT)} udev-reload /mnt/udev.jsonl {k} {i} '{a}'"))
    _wait_file_line(g, g.outdir / "udev.jsonl", "start")


def wait_udev_quiet(g: Guest, quiet_s: float = 4.0, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = len(_jsonl(g.outdir / "udev.jsonl"))
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.3)
    raise GuestError("udev-style reloader never went quiet", g.tail(15))


BUS = "unix:path=/run/kdumpd-e2e-bus"
BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/kdumpd-e2e-bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


def start_bus(g: Guest) -> None:
    """A private system bus in the guest (the host root is read-only, so the
    project's policy file is not installed there; this bus allows everything)."""
    (g.outdir / "bus.conf").write_text(BUS_CONF)
    g.host("dbus-daemon --config-file=/mnt/bus.conf --fork --nopidfile")


def start_daemon(g: Guest, kern: kernels.Kernel, ird: Path, backend: str = "auto") -> None:
    """``kdumpd run`` in the guest; its pid (for SIGHUP) in /host/run/kdumpd-e2e.pid."""
    config = (
        f'backend = "{backend}"\n'
        'state_dir = "/run/kdumpd"\n'
        'event_source = "netlink"\n'
        "dbus = true\n"
        "[debounce]\nquiet_ms = 100\nmax_ms = 1000\n"
        "[elfcorehdr]\nmax_cpus = 16\nmax_ranges = 1024\n"
        f'[kexec]\nkernel = "{g.guest_path(kern.vmlinuz)}"\ninitrd = "{g.guest_path(ird)}"\n'
        f'cmdline = "{capture_append(g.arch)}"\nappend = ""\n'
    )
    (g.outdir / "kdumpd.toml").write_text(config)
    start_bus(g)
    g.spawn(
        _chroot(
            f"echo $$ > {PIDFILE}; export PYTHONDONTWRITEBYTECODE=1 "
            f"DBUS_SYSTEM_BUS_ADDRESS={BUS}; "
            f"exec {kdumpd_cmd(g)} -v run --config /mnt/kdumpd.toml > /mnt/kdumpd.log 2>&1"
        )
    )
    wait_daemon(g, lambda s: s.get("state") == "loaded" and s.get("generation", 0) >= 1, 300)


def daemon_state(g: Guest) -> dict[str, Any]:
    """The daemon's DaemonState, read over D-Bus with ``kdumpd status --json``."""
    rc, out = g.run(
        _chroot(f"PYTHONDONTWRITEBYTECODE=1 {kdumpd_cmd(g)} status --json --bus-address {BUS}"),
        timeout=120,
    )
    if rc not in (0, 3, 4):  # 3: not loaded, 4: loaded but stale (kdumpd status)
        return {}
    try:
        data: dict[str, Any] = json.loads(out[out.find("{") :])
    except json.JSONDecodeError:
        return {}
    return data


def wait_daemon(
    g: Guest, pred: Callable[[dict[str, Any]], bool], timeout: float = 300.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = daemon_state(g)
        if st and pred(st):
            return st
        time.sleep(0.5)
    log = g.outdir / "kdumpd.log"
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""
    raise GuestError(
        f"kdumpd never reached the expected state; last state {st}\n{tail}", g.tail(10)
    )


def wait_daemon_settled(g: Guest, quiet_s: float = 3.0, timeout: float = 600.0) -> dict[str, Any]:
    """Until the daemon's counters stop moving, its image is loaded and not stale."""
    deadline = time.monotonic() + timeout
    last: tuple[Any, ...] = ()
    since = time.monotonic()
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = daemon_state(g)
        key = (st.get("events_received"), st.get("generation"), st.get("state"))
        if key != last:
            last, since = key, time.monotonic()
        elif (
            time.monotonic() - since >= quiet_s
            and st.get("state") == "loaded"
            and not st.get("stale", True)
        ):
            return st
        time.sleep(0.3)
    raise GuestError(f"kdumpd never settled (last state {st})", g.tail(10))


# -- the scenarios ---------------------------------------------------------------------


@dataclass
class Ctx:
    g: Guest
    kern: kernels.Kernel
    ird: Path
    res: Result
    crash_cpu: int | None = None  # ppc64le: panic on this CPU (the last hot-added one)
    backend: str = "auto"  # the daemon's configured back-end


def _add_cpus(c: Ctx, n: int) -> list[tuple[str, int]]:
    out = []
    for i in range(n):
        dev = f"cpu{i + 1}"
        out.append((dev, hotplug.add_cpu(c.g, dev)))
    if out and c.g.arch == "ppc64le":
        # the failure the crash FDT is about: a panic on a CPU the loaded FDT lacks
        c.crash_cpu = out[-1][1]
    return out


def sc_baseline(c: Ctx) -> None:
    c.res.backend = "kexec-tools (kexec_load)"
    c.res.expect = "stale" if c.kern.key == "6.1" else "report"
    kexec_tools_load(c.g, c.kern, c.ird)
    c.res.loads = 1
    _add_cpus(c, 2)
    hotplug.add_dimm(c.g, "dimm1", 512 * MiB)
    time.sleep(2)


def sc_baseline_cpu0(c: Ctx) -> None:
    """ppc64le: as ``baseline``, but the panic runs on CPU 0 (in the loaded FDT), so the
    capture kernel boots and shows what else is stale: the hot-added memory."""
    sc_baseline(c)
    c.crash_cpu = 0


def sc_hotplug_add(c: Ctx) -> None:
    c.res.backend = "kdumpd"
    start_daemon(c.g, c.kern, c.ird, c.backend)
    _add_cpus(c, 2)
    hotplug.add_dimm(c.g, "dimm1", 256 * MiB)
    hotplug.add_dimm(c.g, "dimm2", 256 * MiB)
    wait_daemon_settled(c.g)


def sc_late_start(c: Ctx) -> None:
    """ppc64le 6.12: 2 DIMMs hot-added *before* the daemon starts (a restart after a
    hot-add).  kexec-tools stops its elfcorehdr at ``/chosen/linux,memory-limit`` (the
    end of boot memory on 6.12), so the start's load lacks them and the daemon must say
    so (``stale``, ``StaleReason``); one more DIMM makes the kernel rebuild the whole
    elfcorehdr in place (the image was loaded with ``--hotplug``), the reason goes, and
    the dump is complete."""
    _start_after_dimms(c)
    hotplug.add_dimm(c.g, "dimm3", 256 * MiB)
    st = wait_daemon_settled(c.g)
    c.res.detail["stale_after_add"] = {k: st.get(k) for k in STALE_FIELDS}


def sc_late_start_stale(c: Ctx) -> None:
    """As ``late-start``, but the crash comes while the daemon says ``stale``: the dump
    must lack exactly the RAM its ``StaleReason`` names (the state claims no more than
    is loaded)."""
    c.res.expect = "stale"
    _start_after_dimms(c)


STALE_FIELDS = ("state", "stale", "stale_reason")


def _start_after_dimms(c: Ctx) -> None:
    """2 x 256 MiB hot-added, then the daemon started; its state once it names a
    stale reason in ``detail["stale_at_start"]``."""
    c.res.backend = "kdumpd"
    hotplug.add_dimm(c.g, "dimm1", 256 * MiB)
    hotplug.add_dimm(c.g, "dimm2", 256 * MiB)
    start_daemon(c.g, c.kern, c.ird, c.backend)
    st = wait_daemon(c.g, lambda s: bool(s.get("stale_reason")), 60)
    c.res.detail["stale_at_start"] = {k: st.get(k) for k in STALE_FIELDS}


def stale_reason_matches_dump(res: Result) -> list[str]:
    """The RAM a ``late-start-stale`` row's StaleReason names (size, first range) is
    what its vmcore lacks."""
    reason = str((res.detail.get("stale_at_start") or {}).get("stale_reason") or "")
    m = re.search(r"left (\d+) MiB of RAM \((0x[0-9a-f]+)-", reason)
    if m is None:
        return [f"no RAM named in the stale reason: {reason!r}"]
    missing = []
    if round(res.missing_mb) != int(m.group(1)):
        missing.append(f"the dump lacks {res.missing_mb} MiB, the reason says {m.group(1)} MiB")
    if not res.missing_ranges or res.missing_ranges[0][0] != m.group(2):
        missing.append(f"the dump lacks {res.missing_ranges}, the reason starts at {m.group(2)}")
    return missing


def late_start_proved(res: Result) -> list[str]:
    """What a ``late-start`` row lacks: the daemon named the RAM kexec-tools left out
    at its start, and cleared it once the kernel rebuilt the elfcorehdr."""
    missing = []
    at_start = res.detail.get("stale_at_start") or {}
    if not at_start.get("stale") or "linux,memory-limit" not in str(at_start.get("stale_reason")):
        missing.append(f"no memory-limit reason after the start: {at_start}")
    after = res.detail.get("stale_after_add") or {}
    if after.get("stale") or after.get("stale_reason"):
        missing.append(f"still stale after the kernel's rebuild: {after}")
    return missing


def sc_hotplug_remove(c: Ctx) -> None:
    c.res.backend = "kdumpd"
    start_daemon(c.g, c.kern, c.ird, c.backend)
    cpus = _add_cpus(c, 2)
    hotplug.add_dimm(c.g, "dimm1", 256 * MiB)
    hotplug.add_dimm(c.g, "dimm2", 256 * MiB)
    wait_daemon_settled(c.g)
    hotplug.remove_dimm(c.g, "dimm2", 256 * MiB)
    dev, cpu = cpus[-1]
    hotplug.remove_cpu(c.g, dev, cpu)
    if c.crash_cpu == cpu:  # ppc64le: panic on the hot-added CPU that is still there
        c.crash_cpu = cpus[0][1]
    wait_daemon_settled(c.g)


def _burst(c: Ctx, n: int) -> None:
    c.res.detail["ram_at_start"] = sum(b - a + 1 for a, b in c.g.system_ram())
    for i in range(n):
        hotplug.add_dimm(c.g, f"b{i}", BURST_DIMM_MB * MiB, wait=False)


def sc_burst(c: Ctx) -> None:
    c.res.backend = "kdumpd"
    start_daemon(c.g, c.kern, c.ird, c.backend)
    n = burst_dimms(c.g.arch)
    _burst(c, n)
    _wait_ram(c, n * BURST_DIMM_MB * MiB)
    wait_daemon_settled(c.g)


def dt_chosen_cell(g: Guest, name: str) -> int | None:
    """ppc64: the guest's ``/chosen/linux,<name>`` cell, None where it is absent."""
    rc, out = g.run(f"od -An -v -tx1 /proc/device-tree/chosen/linux,{name}")
    digits = out.replace(" ", "").replace("\n", "")
    return int(digits, 16) if rc == 0 and digits else None


def dt_memory_limit(g: Guest) -> int:
    """ppc64: ``/chosen/linux,memory-limit`` (0 where absent or 0): where kexec-tools'
    elfcorehdr stops (docs/kernel-interfaces.md §10)."""
    return dt_chosen_cell(g, "memory-limit") or 0


def sc_burst_udev(c: Ctx) -> None:
    c.res.backend = "udev-style reload (kexec -p -u; kexec -p)"
    if c.g.arch == "ppc64le":
        limit = dt_memory_limit(c.g)
        c.res.detail["memory_limit"] = f"{limit:#x}"
        if limit:  # every kexec -p cuts the DIMMs above it out: asserted, not hoped
            c.res.expect = "stale"
    kexec_tools_load(c.g, c.kern, c.ird)
    start_udev_reloader(c.g, c.kern, c.ird)
    n = burst_dimms(c.g.arch)
    _burst(c, n)
    _wait_ram(c, n * BURST_DIMM_MB * MiB)
    wait_udev_quiet(c.g)


def sc_crash_during_burst(c: Ctx) -> None:
    c.res.backend = "kdumpd"
    c.res.expect = "dump"
    start_daemon(c.g, c.kern, c.ird, c.backend)
    _burst(c, burst_dimms(c.g.arch))
    # crash while the guest is still onlining blocks and the daemon is debouncing
    time.sleep(1.0)


def padded_initrd(ird: Path, mb: int = RACE_INITRD_MB) -> Path:
    """``ird`` followed by NUL bytes up to ``mb`` MiB: as long to load and digest as a
    distribution's kdump initrd, and the capture kernel's unpacker skips NUL padding
    between archives (init/initramfs.c), so it boots exactly like ``ird``."""
    dest = ird.with_name(f"{ird.name}.pad{mb}M")
    size = mb * MiB
    if dest.exists() and dest.stat().st_size == size:
        return dest
    data = ird.read_bytes()
    if len(data) >= size:
        return ird
    part = dest.with_suffix(".part")
    with open(part, "wb") as f:
        f.write(data)
        f.truncate(size)  # zeros; holes on the host, read as zeros by kexec_file_load
    part.rename(dest)
    return dest


def _count(path: Path, needle: str) -> int:
    return path.read_text(errors="replace").count(needle) if path.exists() else 0


def _wait_count(path: Path, needle: str, more_than: int, g: Guest, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _count(path, needle) > more_than:
            return
        time.sleep(0.01)
    raise GuestError(f"{path.name}: no new {needle!r} after {timeout:.0f}s", g.tail(10))


def sc_load_race(c: Ctx) -> None:
    """Hot-add a DIMM while kdumpd's own load (SIGHUP: a fresh kexec_file_load of a
    kdump-sized initrd) holds the kexec lock.  The kernel skips its in-place update and
    logs "crash hp: kexec_trylock() failed"; kdumpd must notice and load again.  The
    DIMM's timing is retried until the guest kernel logs that line (the row proves
    the race happened, not only that the dump is complete)."""
    c.res.backend = "kdumpd"
    g = c.g
    ird = padded_initrd(c.ird)
    c.res.detail["initrd_mb"] = round(ird.stat().st_size / MiB, 1)
    start_daemon(g, c.kern, ird, c.backend)
    st = wait_daemon_settled(g)
    c.res.detail["start_load_ms"] = round((st.get("last_load_gap_usec") or 0) / 1000, 1)
    log = g.outdir / "kdumpd.log"
    attempts: list[dict[str, Any]] = []
    for i in range(RACE_ATTEMPTS):
        delay = RACE_DELAYS[i % len(RACE_DELAYS)]
        lines0 = _count(g.console_path, TRYLOCK_LINE)
        loads0 = int(st.get("loads") or 0)
        reread0 = _count(log, "configuration re-read")
        g.check(f"kill -HUP $(cat /host{PIDFILE})")
        _wait_count(log, "configuration re-read", reread0, g)
        time.sleep(delay)
        hotplug.add_dimm(g, f"race{i}", 256 * MiB)
        st = wait_daemon_settled(g)
        time.sleep(1.0)  # the console is a slow UART under TCG
        lines = _count(g.console_path, TRYLOCK_LINE) - lines0
        attempts.append(
            {
                "delay_s": delay,
                "trylock_lines": lines,
                "loads": int(st.get("loads") or 0) - loads0,
                "load_ms": round((st.get("last_load_gap_usec") or 0) / 1000, 1),
            }
        )
        if lines:
            break
    c.res.detail["race_attempts"] = attempts
    c.res.detail["race_reproduced"] = bool(attempts and attempts[-1]["trylock_lines"])


def race_proved(c: Ctx) -> list[str]:
    """What the load-race row still lacks (empty: the race happened and was handled)."""
    missing = []
    if TRYLOCK_LINE not in c.g.console():
        missing.append(f"no {TRYLOCK_LINE!r} in the guest console (race not reproduced)")
    log = _count(c.g.outdir / "kdumpd.log", RACE_REASON) + _count(
        c.g.outdir / "kdumpd.log", "skipped an in-place crash-hotplug update"
    )
    if not log:
        missing.append("kdumpd's log shows no extra load with its reason")
    return missing


class RowDecided(Exception):
    """Raised by a scenario that has already decided its row (no vmcore to compare)."""


CORRUPT_SCRIPT = "tests.e2e.segment_corrupt"
PURGATORY_LINE = (
    r"kdumpd purgatory: region (\d+) sha256 mismatch, capture kernel not started, resetting"
)


def sc_segment_corrupt(c: Ctx) -> None:
    """kdumpd's own image (the ``segment`` back-end's builder and kexec_load wrapper, run
    by tests/e2e/segment_corrupt.py in the guest) with one kernel byte flipped after the
    purgatory's digests were computed.  Expect at the crash: the purgatory's line naming
    the kernel's region, a reset (QEMU exits: -no-reboot), and no capture kernel."""
    c.res.backend = "segment (kdumpd image, 1 kernel byte flipped after hashing)"
    c.res.expect = "refused"
    g = c.g
    g.check(
        _chroot(
            f"cd {REPO} && PYTHONDONTWRITEBYTECODE=1 {REPO}/.venv/bin/python -m {CORRUPT_SCRIPT} "
            f"{c.kern.vmlinuz} {c.ird} '{CAPTURE_APPEND}' kernel /mnt/segment-load.json"
        ),
        timeout=300,
    )
    load = json.loads((g.outdir / "segment-load.json").read_text())
    c.res.loads = 1
    c.res.detail["load"] = load
    kernel = next(s for s in load["segments"] if s["kind"] == "kernel")
    region = next(r["index"] for r in load["regions"] if r["start"] == kernel["mem"])
    if load["loaded"] != "1":
        raise GuestError("kexec_crash_loaded is not 1 after the load", g.tail(10))
    start = len(g.console())
    t0 = time.monotonic()
    g.spawn("echo c > /proc/sysrq-trigger")
    m = g.wait_console(PURGATORY_LINE, 300, start)
    # panic, crash shutdown and the purgatory hashing every region under TCG
    c.res.detail["crash_to_purgatory_line_s"] = round(time.monotonic() - t0, 1)
    c.res.detail["purgatory_line"] = m.group(0)
    proc = g.proc
    deadline = time.monotonic() + 60
    while proc is not None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    after = g.console()[m.end() :]
    c.res.detail["qemu_exited"] = proc is not None and proc.poll() is not None
    c.res.detail["capture_kernel_output"] = "Linux version" in after or "@@VMCORE" in after
    c.res.detail["purgatory_said_ok"] = "regions ok, starting" in g.console()[start:]
    c.res.passed = (
        int(m.group(1)) == region
        and c.res.detail["qemu_exited"]
        and not c.res.detail["capture_kernel_output"]
        and not c.res.detail["purgatory_said_ok"]
    )
    raise RowDecided


def _wait_ram(c: Ctx, added: int, timeout: float = 600.0) -> None:
    base = c.res.detail["ram_at_start"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total = sum(b - a + 1 for a, b in c.g.system_ram())
        if total >= base + added:
            return
        time.sleep(0.5)
    raise GuestError("burst DIMMs never all came online", c.g.tail(10))


SCENARIOS: dict[str, Callable[[Ctx], None]] = {
    "baseline": sc_baseline,
    "baseline-cpu0": sc_baseline_cpu0,
    "hotplug-add": sc_hotplug_add,
    "hotplug-remove": sc_hotplug_remove,
    "late-start": sc_late_start,
    "late-start-stale": sc_late_start_stale,
    "burst": sc_burst,
    "burst-udev": sc_burst_udev,
    "crash-during-burst": sc_crash_during_burst,
    "load-race": sc_load_race,
    "segment-corrupt": sc_segment_corrupt,
    # hotplug-add in a guest booted by OVMF (UEFI): kdumpd's capture boot_params under
    # an EFI memory map (the segment back-end hands over no EFI state, only ACPI)
    "efi-hotplug-add": sc_hotplug_add,
}
# Scenarios that only mean something on some kernels (others are skipped by run.py):
# load-race needs in-kernel crash hotplug (CONFIG_CRASH_HOTPLUG, 6.6+); segment-corrupt
# is about the purgatory, which is the same on every kernel: the 6.1 guest is enough.
# late-start is about 6.12's /chosen/linux,memory-limit (6.1 publishes 0).
ONLY_ON = {
    "load-race": {"6.12"},
    "segment-corrupt": {"6.1"},
    "efi-hotplug-add": {"6.1"},
    "late-start": {"6.12"},
    "late-start-stale": {"6.12"},
}
# Scenarios per architecture (run.py skips the others).
ARCH_SCENARIOS = {
    "x86_64": {
        "baseline", "hotplug-add", "hotplug-remove", "burst", "burst-udev",
        "crash-during-burst", "load-race", "segment-corrupt", "efi-hotplug-add",
    },
    "ppc64le": {"baseline", "baseline-cpu0", "hotplug-add", "hotplug-remove", "burst",
                "burst-udev", "late-start", "late-start-stale"},
}  # fmt: skip
# Rows whose loads on a kernel with crash hotplug are checked by in_place_proved().
IN_PLACE_SCENARIOS = frozenset(
    {"hotplug-add", "hotplug-remove", "burst", "efi-hotplug-add", "late-start", "late-start-stale"}
)
# Rows without kdumpd (the back-end option does not apply).
NO_DAEMON = {"baseline", "baseline-cpu0", "burst-udev", "segment-corrupt"}
# Rows of the default matrix (make e2e) for one back-end on one kernel: (kernel,
# scenario, back-end).  6.12 + segment: kdumpd's own image with in-kernel updates
# (KEXEC_UPDATE_ELFCOREHDR); efi-*: the guest boots through OVMF (UEFI).
EXTRA_ROWS = [
    ("6.12", "hotplug-add", "segment"),
    ("6.12", "hotplug-remove", "segment"),
    ("6.12", "burst", "segment"),
    ("6.1", "efi-hotplug-add", "segment"),
    ("6.1", "efi-hotplug-add", "file"),
]
# "burst" on the command line runs both the daemon and the udev-style reload.
ALIASES = {"burst": ["burst", "burst-udev"]}
# ppc64le: "baseline" also crashes on CPU 0 (the capture kernel boots; memory missing).
ALIASES_PPC64LE = {
    "burst": ["burst", "burst-udev"],
    "baseline": ["baseline", "baseline-cpu0"],
    "late-start": ["late-start", "late-start-stale"],
}


def _guest(
    kern: kernels.Kernel, ird: Path, workdir: Path, scenario: str, root: Path | None
) -> Guest:
    bursty = scenario.startswith(("burst", "crash-during"))
    n = burst_dimms(kern.arch)
    if kern.arch == "ppc64le":
        return Guest(
            kern,
            ird,
            workdir,
            mem="2G",
            slots=n + 2 if bursty else 8,
            maxmem=f"{2 + (n * BURST_DIMM_MB + 1023) // 1024 + 2}G",
            crashkernel="512M",
            cpu_hotplug="acpi",  # QMP device_add of a spapr CPU core; the kernel onlines it
            pyroot=root,
        )
    return Guest(
        kern,
        ird,
        workdir,
        slots=n + 2 if bursty else 8,
        maxmem=f"{1 + (n * BURST_DIMM_MB + 1023) // 1024 + 2}G",
        cpu_hotplug=cpu_hotplug_mode(kern.key),
        # load-race asserts the kernel's pr_info line on the console
        extra_append="loglevel=7" if scenario == "load-race" else "",
        firmware="ovmf" if scenario.startswith("efi-") else "bios",
    )


def _dtb_cpus(blob: bytes) -> list[str]:
    """The CPU nodes of a flattened tree, in the capture side's ``dtcpu`` format."""
    import libfdt

    fdt = libfdt.FdtRo(bytearray(blob))
    out = []
    cpus = fdt.path_offset("/cpus")
    node = fdt.first_subnode(cpus, libfdt.QUIET_NOTFOUND)
    while node >= 0:

        def prop(name: str, node: int = node) -> bytes:
            p = fdt.getprop(node, name, libfdt.QUIET_NOTFOUND)
            return bytes(p) if not isinstance(p, int) else b""

        if prop("reg"):
            status = prop("status").rstrip(b"\0").decode() or "none"
            out.append(
                f"{fdt.get_name(node)} reg={prop('reg').hex()} "
                f"servers={prop('ibm,ppc-interrupt-server#s').hex()} status={status}"
            )
        node = fdt.next_subnode(node, libfdt.QUIET_NOTFOUND)
    return out


def kdumpd_fdt_cpus(g: Guest) -> list[str]:
    """Run ``kdumpd fdt`` in the guest for its topology right now (just before the
    crash) and return the CPU nodes of the crash FDT it builds."""
    from kdumpd.core.fdt import minimal_fdt  # libfdt: only the ppc64le rows need it

    # a minimal base with an empty /cpus: its children come from the live tree
    (g.outdir / "base.dtb").write_bytes(minimal_fdt())
    g.host(
        f"{kdumpd_cmd(g)} fdt --arch ppc64le --base /mnt/base.dtb --capacity auto "
        "-o /mnt/kdumpd-crash.dtb",
        timeout=300,
    )
    return _dtb_cpus((g.outdir / "kdumpd-crash.dtb").read_bytes())


def compare_fdt_cpus(ours: list[str], capture: list[str]) -> dict[str, Any]:
    """kdumpd's crash-FDT CPU nodes against the capture kernel's /proc/device-tree/cpus
    (name, reg, ibm,ppc-interrupt-server#s, status)."""
    a, b = sorted(ours), sorted(capture)
    return {
        "capture": capture,
        "equal": a == b,
        "only_kdumpd": [x for x in a if x not in b],
        "only_capture": [x for x in b if x not in a],
    }


def _chosen_crashkernel(g: Guest) -> list[tuple[int, int]]:
    """ppc64: the crashkernel= reservation from /chosen (its /proc/iomem has no
    ``Crash kernel`` entry)."""
    base, size = dt_chosen_cell(g, "crashkernel-base"), dt_chosen_cell(g, "crashkernel-size")
    if base is None or size is None:
        raise GuestError("no /chosen/linux,crashkernel-{base,size} in the guest", g.tail(5))
    return [(base, base + size - 1)] if size else []


def row_name(scenario: str, backend: str = "auto") -> str:
    return scenario if backend == "auto" else f"{scenario}@{backend}"


# The purgatory's line after every region checked out (docs/purgatory.md).
PURGATORY_OK = re.compile(
    r"kdumpd purgatory: (\d+) regions? ok, starting the capture kernel at (0x[0-9a-f]+)"
)


def _image_provenance(res: Result, body: str, g: Guest) -> None:
    """elfcorehdr_addr/_ours and purgatory_entered from the capture kernel's command line,
    the daemon's log and the console."""
    # "elfcorehdr=0x<hex>" (the kernel's loader, kdumpd) or "elfcorehdr=<N>K" (kexec-tools)
    m = re.search(r"^cmdline .*?\belfcorehdr=(0x[0-9a-fA-F]+|[0-9]+)([KkMm]?)", body, re.M)
    if m is None:
        return
    addr = int(m.group(1), 0) << {"": 0, "k": 10, "m": 20}[m.group(2).lower()]
    res.elfcorehdr_addr = f"{addr:#x}"
    log_path = g.outdir / "kdumpd.log"
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    ours = re.findall(r"elfcorehdr at (0x[0-9a-f]+)", log)
    if not res.backend.startswith("kdumpd"):
        return
    res.elfcorehdr_ours = bool(ours) and int(ours[-1], 16) == addr
    if res.backend != "kdumpd/segment":
        res.purgatory_entered = False
        return
    console = g.console_path.read_text(errors="replace") if g.console_path.exists() else ""
    ok = PURGATORY_OK.search(console)
    if ok:
        res.purgatory_entered = True
        res.detail["purgatory_evidence"] = ok.group(0)
    else:
        # kexec jumps to the image's entry point, which kdumpd set to the purgatory
        # segment; nothing else in the image can start the capture kernel with the
        # boot_params (and so the elfcorehdr= address) that only kdumpd wrote.
        res.purgatory_entered = bool(res.elfcorehdr_ours)
        res.detail["purgatory_evidence"] = (
            "entry = purgatory segment; the capture kernel booted with kdumpd's boot_params"
        )


def run(
    kernel_key: str, scenario: str, build: Path, arch: str = "x86_64", backend: str = "auto"
) -> Result:
    res = Result(
        kernel=kernel_key, scenario=scenario, backend="", arch=arch, requested_backend=backend
    )
    t0 = time.monotonic()
    g: Guest | None = None
    try:
        kern = kernels.fetch(kernel_key, arch)
        res.release = kern.release
        root = None
        if arch == "ppc64le":
            root = pyroot.build()
            pyroot.compile_checkout()
        ird = initramfs.build(kern, pyroot=root)
        if INITRD_MB and scenario != "load-race":
            ird = padded_initrd(ird, INITRD_MB)
            res.detail["initrd_mb"] = INITRD_MB
        prefix = "" if arch == "x86_64" else f"{arch}-"
        row = row_name(scenario, backend).replace("@", "-")
        workdir = build / f"{prefix}{kern.key.replace('/', '_')}-{row}"
        g = _guest(kern, ird, workdir, scenario, root)
        g.start()
        res.boot_s = round(g.boot_s, 2)
        start_sampler(g)
        c = Ctx(g, kern, ird, res, backend=backend)
        SCENARIOS[scenario](c)
        crashk = _chosen_crashkernel(g) if arch == "ppc64le" else None
        if arch == "ppc64le" and res.backend == "kdumpd":
            res.detail["fdt_compare"] = {"kdumpd": kdumpd_fdt_cpus(g)}
        if res.backend == "kdumpd" and scenario != "crash-during-burst":
            st = daemon_state(g)
            res.detail["daemon"] = {k: st.get(k) for k in DAEMON_FIELDS}
            res.backend = f"kdumpd/{st.get('backend', '?')}"
            res.events = st.get("events_received")
            res.loads = st.get("loads")
            # 6.6+: whether the kernel marked the loaded image hotplug-capable (the
            # read takes the kexec lock: only here, after the daemon settled)
            res.detail["crash_hotplug"] = g.run(
                "cat /sys/devices/system/memory/crash_hotplug 2>/dev/null || echo none"
            )[1].strip()
        if scenario != "crash-during-burst":
            stop_sampler(g)
        if g.firmware == "ovmf":
            res.detail["efi"] = efi_facts(g)
        res.crash_cpu = c.crash_cpu
        try:
            # ppc64le under TCG: panic to capture /init ~5-15 s; a capture kernel that
            # dies in early boot never reports (the stale baseline on a hot-added CPU)
            no_kdumpd = res.expect in ("stale", "report")  # the capture kernel may not boot
            timeout = 240.0 if arch == "x86_64" else (90.0 if no_kdumpd else 150.0)
            body, cpus_text, iomem = g.crash(timeout=timeout, cpu=c.crash_cpu)
            res.dump = True
        except GuestError as err:
            if arch != "ppc64le" or not no_kdumpd:
                raise
            res.detail["capture"] = f"no vmcore: {err.args[0]}"
            res.detail["capture_console_tail"] = g.tail(12).splitlines()
            body = ""
            cpus_text = (g.outdir / "at-crash-cpus").read_text()
            iomem = (g.outdir / "at-crash-iomem").read_text()
        samples = _jsonl(g.outdir / "sampler.jsonl")
        if res.backend == "kdumpd":  # crashed without asking the daemon: its log
            log = (g.outdir / "kdumpd.log").read_text(errors="replace")
            res.loads = log.count(" applied (")
            be = re.search(r"backend (\S+) \(", log)
            res.backend = f"kdumpd/{be.group(1) if be else '?'}"
        _fill_timing(res, samples, g)
        res.cpus_online = parse_cpulist(cpus_text)
        reserved = crashk if crashk is not None else iomem_ranges(iomem, "Crash kernel")
        need = vmcore.subtract(iomem_ranges(iomem, "System RAM", top_level=True), reserved)
        res.ram_ranges = [_hex(r) for r in need]
        rep = vmcore.parse(body)
        _image_provenance(res, body, g)
        res.capture_dt_cpus = rep.dt_cpus
        if "fdt_compare" in res.detail and rep.dt_cpus:
            res.detail["fdt_compare"].update(
                compare_fdt_cpus(res.detail["fdt_compare"]["kdumpd"], rep.dt_cpus)
            )
        res.vmcore_size = rep.size
        res.prstatus_cpus = [p.index for p in rep.prstatus if p.has_regs]
        res.prstatus_pids = [p.pid for p in rep.prstatus]
        res.vmcore_ranges = [_hex(r) for r in vmcore.merge(rep.loads)]
        # x86 kexec_file_load leaves the low 1 MiB out of the elfcorehdr on purpose
        # (it is always reserved; arch/x86/kernel/crash.c), kexec_load's
        # elfcorehdr from kexec-tools includes it: it does not count either way.
        missing = vmcore.uncovered(vmcore.subtract(need, [(0, LOW_1M - 1)]), rep.loads)
        res.detail["low_1m_in_vmcore"] = not vmcore.uncovered(
            [r for r in need if r[1] < LOW_1M], rep.loads
        )
        res.missing_ranges = [_hex(r) for r in missing]
        # PT_LOADs over memory that is not System RAM any more (a removed DIMM):
        # the capture side would read unplugged memory.  Reported, and not "exact".
        extra = vmcore.uncovered(rep.loads, need)
        res.extra_ranges = [_hex(r) for r in extra]
        # ... of which outside the reservation: memory the first kernel no longer has
        # (inside it: ppc64's RTAS region, which kexec-tools describes on purpose)
        res.detail["extra_outside_reservation"] = [
            _hex(r) for r in vmcore.uncovered(extra, reserved)
        ]
        res.extra_mb = round(sum(b - a + 1 for a, b in extra) / MiB, 1)
        res.missing_mb = round(sum(b - a + 1 for a, b in missing) / MiB, 1)
        res.complete = not missing and len(res.prstatus_cpus) >= len(res.cpus_online)
        if res.dump and (rep.size == 0 or not rep.loads):
            raise GuestError("capture kernel reported no vmcore", g.tail(30))
        if res.expect == "complete":
            res.passed = res.complete
        elif res.expect == "stale":
            res.passed = not res.complete
        else:
            res.passed = True
        if backend == "segment":  # the row is about kdumpd's own image reaching the kernel
            res.passed = res.passed and bool(res.elfcorehdr_ours and res.purgatory_entered)
            if res.backend != "kdumpd/segment":
                res.passed = False
                res.detail["backend_mismatch"] = res.backend
        if g.firmware == "ovmf":
            res.detail["efi"].update(capture_acpi(g))
            res.passed = res.passed and bool(res.detail["efi"].get("booted_efi"))
            res.passed = res.passed and bool(res.detail["efi"].get("capture_acpi"))
        # the rows about in-kernel updates: kdumpd's own image (segment), the kernel's
        # (kexec_file_load) and, on ppc64le, the one kexec -p --hotplug loaded; not
        # load-race (its extra loads are the point) nor crash-during-burst
        in_place_row = scenario in IN_PLACE_SCENARIOS and (
            backend == "segment" or res.backend in ("kdumpd/kernel", "kdumpd/kexec-tools")
        )
        if in_place_row and res.detail.get("crash_hotplug", "none") != "none":
            res.detail["in_place_missing"] = in_place_proved(res, scenario)
            res.passed = res.passed and not res.detail["in_place_missing"]
        if scenario == "late-start":
            res.detail["late_start_missing"] = late_start_proved(res)
            res.passed = res.passed and not res.detail["late_start_missing"]
        if scenario == "late-start-stale":
            res.detail["stale_reason_vs_dump"] = stale_reason_matches_dump(res)
            res.passed = res.passed and not res.detail["stale_reason_vs_dump"]
        if scenario == "load-race":
            res.detail["race_missing"] = race_proved(c)
            res.passed = res.passed and not res.detail["race_missing"]
    except RowDecided:
        pass
    except Exception as exc:
        res.error = str(exc) if isinstance(exc, GuestError) else f"{type(exc).__name__}: {exc}"
        if g is not None and not isinstance(exc, GuestError):
            res.error += "\n--- serial console tail ---\n" + g.tail(30)
    finally:
        if g is not None:
            g.stop()
            log = g.outdir / "kdumpd.log"
            if log.exists():
                res.detail["kdumpd_log_tail"] = log.read_text(errors="replace").splitlines()[-15:]
    res.duration_s = round(time.monotonic() - t0, 1)
    return res


def efi_facts(g: Guest) -> dict[str, Any]:
    """An OVMF guest: did the first kernel boot as an EFI kernel, what RSDP did the
    firmware publish and what does the running boot_params say (``acpi_rsdp_addr``)."""
    _, systab = g.run("grep ACPI /sys/firmware/efi/systab 2>/dev/null")
    _, rsdp = g.run(
        "dd if=/sys/kernel/boot_params/data bs=1 skip=112 count=8 2>/dev/null | od -An -tx1"
    )
    raw = bytes.fromhex("".join(rsdp.split()) or "00")
    return {
        "booted_efi": g.run("test -d /sys/firmware/efi/runtime-map || test -d /sys/firmware/efi")[0]
        == 0,
        "systab_acpi": systab.split(),
        "boot_params_acpi_rsdp_addr": f"{int.from_bytes(raw, 'little'):#x}",
    }


def capture_acpi(g: Guest) -> dict[str, Any]:
    """Whether the capture kernel found ACPI (it prints "A valid RSDP was not found"
    when it did not) and, with the segment back-end, booted without EFI."""
    console = g.console()
    cut = console.rfind("sysrq: Trigger a crash")
    capture = console[cut:] if cut >= 0 else console
    return {"capture_acpi": "A valid RSDP was not found" not in capture}


def in_place_proved(res: Result, scenario: str) -> list[str]:
    """What an in-place row on a kernel with crash hotplug (6.6+) lacks: the image was
    loaded hotplug-capable (``segment``: KEXEC_UPDATE_ELFCOREHDR; ``kexec-tools``:
    ``--hotplug``, KEXEC_CRASH_HOTPLUG_SUPPORT), so ``crash_hotplug`` reads 1, hotplug made
    no load (the start's only; one more after a DIMM removal, which the kernel's
    MEM_OFFLINE update does not drop) and no PT_LOAD covers removed memory."""
    missing = []
    if res.detail.get("crash_hotplug") != "1":
        missing.append(f"crash_hotplug reads {res.detail.get('crash_hotplug')!r}, not 1")
    allowed = 2 if scenario == "hotplug-remove" else 1
    if res.loads is None or res.loads > allowed:
        missing.append(f"{res.loads} loads (at most {allowed} expected)")
    removed = res.detail.get("extra_outside_reservation", res.extra_ranges)
    if removed:
        missing.append(f"PT_LOADs over removed memory: {removed}")
    return missing


def _gaps(samples: list[dict[str, Any]]) -> tuple[float, int]:
    """No-image time (ms) and gaps after the first load, from the sampler's
    crash_loaded transitions, up to its last record."""
    loaded_seen = False
    total, gaps, since = 0.0, 0, None
    end = max((s.get("mono", 0.0) for s in samples), default=0.0)
    for s in samples:
        if s.get("kind") != "crash_loaded":
            continue
        if s["v"] == "1":
            if since is not None:
                total += s["mono"] - since
            loaded_seen, since = True, None
        elif loaded_seen:
            gaps += 1
            since = s["mono"]
    if since is not None:
        total += end - since
    return round(total * 1000, 3), gaps


def _fill_timing(res: Result, samples: list[dict[str, Any]], g: Guest) -> None:
    summary = next((s for s in samples if s.get("kind") == "summary"), {})
    uevents = [s for s in samples if s.get("kind") == "uevent"]
    res.uevents = len(uevents)
    res.no_image_ms = summary.get("no_image_ms")
    res.no_image_gaps = summary.get("gaps")
    if not summary:  # the guest crashed with the sampler running: from its transitions
        res.no_image_ms, res.no_image_gaps = _gaps(samples)
    res.detail["sampler_samples"] = summary.get("samples")
    if res.events is None and res.backend.startswith("kexec-tools"):
        res.events = 0
    last_event = max((s["t"] for s in uevents), default=None)
    if res.backend.startswith("kdumpd"):
        upd = (res.detail.get("daemon") or {}).get("last_update_usec") or 0
        if last_event is not None and upd:
            # <= 0: the image applied before the last uevent already described the
            # final topology (that event changed nothing, e.g. a block's "online"
            # after its "add" had been handled); reported as 0.
            res.detail["settle_raw_ms"] = round(upd / 1000 - last_event * 1000, 1)
            res.settle_ms = max(0.0, res.detail["settle_raw_ms"])
    elif res.backend.startswith("udev"):
        reloads = [r for r in _jsonl(g.outdir / "udev.jsonl") if r.get("kind") == "reload"]
        res.events = len(reloads)
        res.loads = len(reloads) + 1  # + the initial kexec -p
        res.detail["udev_failed_loads"] = sum(1 for r in reloads if r.get("load_rc"))
        if last_event is not None and reloads:
            res.settle_ms = round((reloads[-1]["t"] - last_event) * 1000, 1)
