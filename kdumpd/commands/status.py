"""``kdumpd status``: a human summary of the running daemon, like ``systemctl status``.

Reads every ``org.kdumpd1.Manager`` property (one ``GetAll``; readable by any user)
and prints them.  When the daemon is not on the bus it falls back to
``<state-dir>/state.json`` (what the daemon last recorded) and the kernel's
``/sys/kernel/kexec_crash_loaded``.

Exit codes (as ``systemctl status``, plus one for staleness): 0 a crash image is
loaded and matches the CPUs and memory, 4 an image is loaded but stale (it does not
cover the machine as it is now), 3 no image (or the daemon is not running), 1
nothing could be read.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

from kdumpd.core.errors import KdumpdError
from kdumpd.core.topology import format_cpulist
from kdumpd.system.kexecsysfs import read_crash_loaded

NAME = "status"
HELP = "show the daemon's state (D-Bus, or state.json when the daemon is not running)"

OPERATIONAL = frozenset({"loaded", "updating", "degraded"})

EXIT_LOADED = 0
EXIT_NO_IMAGE = 3
EXIT_STALE = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bus-address",
        default=None,
        help="D-Bus address (default: the system bus, honouring DBUS_SYSTEM_BUS_ADDRESS)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/run/kdumpd"),
        help="where the daemon keeps state.json (default: /run/kdumpd)",
    )
    parser.add_argument("--sysroot", type=Path, default=Path("/"), help="root of /sys (tests)")
    parser.add_argument("--json", action="store_true", help="print the state as JSON")


def _usec_time(usec: int) -> str:
    if not usec:
        return "never"
    t = dt.datetime.fromtimestamp(usec / 1e6, tz=dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _usec_span(usec: int) -> str:
    if usec < 1000:
        return f"{usec} us"
    if usec < 1_000_000:
        return f"{usec / 1000:.3f} ms"
    return f"{usec / 1e6:.3f} s"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}".replace(".0 ", " ")
    return f"{n} B"


def _cpu_list(cpus: list[int]) -> str:
    return format_cpulist(cpus) or "none"


def _ram(ranges: list[list[int]]) -> int:
    return sum(b - a + 1 for a, b in ranges)


def _is_stale(s: dict[str, Any]) -> bool:
    return bool(s.get("stale") or s.get("stale_reason"))


def _covered(ranges: list[list[int]], cov: list[list[int]]) -> list[list[int]]:
    """The ranges of ``ranges`` that lie wholly inside one of ``cov``."""
    return [r for r in ranges if any(c[0] <= r[0] and r[1] <= c[1] for c in cov)]


def _memory_line(mem: list[list[int]], cov: list[list[int]], stale: bool) -> str:
    """RAM now against what the image covers: the count is of the ranges the
    machine has now that the image covers, never of the image's own ranges, so a
    stale image never reads as "4/4 covered"."""
    inside = _covered(mem, cov)
    line = f"{len(inside)}/{len(mem)} ranges covered, {_bytes(_ram(inside))} of {_bytes(_ram(mem))}"
    if stale and _ram(cov) != _ram(inside):
        line += f" (the image describes {_bytes(_ram(cov))} in {len(cov)} ranges)"
    return line


def _active(s: dict[str, Any], state: str) -> str:
    usec = int(s.get("last_update_usec", 0))
    if usec:
        return f"{state} since {_usec_time(usec)}"
    return f"{state} (no image applied yet)"


def _last_update(s: dict[str, Any]) -> str:
    if not int(s.get("last_update_usec", 0)):
        return "none"
    return (
        f"took {_usec_span(int(s.get('last_update_duration_usec', 0)))}, "
        f"no crash image for {_usec_span(int(s.get('last_load_gap_usec', 0)))}"
    )


def exit_code(s: dict[str, Any]) -> int:
    if s.get("state") not in OPERATIONAL:
        return EXIT_NO_IMAGE
    return EXIT_STALE if _is_stale(s) else EXIT_LOADED


def format_state(s: dict[str, Any]) -> str:
    """The summary for a state dict shaped like ``DaemonState.to_json()``."""
    state = str(s.get("state", "unknown"))
    stale = _is_stale(s)
    dot = "●" if state in OPERATIONAL and not stale else "○"
    present = list(s.get("present_cpus", []))
    covered = list(s.get("covered_cpus", []))
    missing = sorted(set(present) - set(covered))
    mem = [list(r) for r in s.get("memory_ranges", [])]
    cov = [list(r) for r in s.get("covered_ranges", [])]
    used, cap = int(s.get("elfcorehdr_used", 0)), int(s.get("elfcorehdr_capacity", 0))
    pct = f" ({100 * used / cap:.1f}%)" if cap else ""
    lines = [
        f"{dot} kdumpd - hotplug-aware kdump image daemon",
        f"         Active: {_active(s, state)}",
        f"        Backend: {s.get('backend') or '-'}"
        + (f" ({s['backend_reason']})" if s.get("backend_reason") else ""),
        f"     Generation: {s.get('generation', 0)}"
        + (f" (last trigger: {s['last_trigger']})" if s.get("last_trigger") else ""),
        f"    Last update: {_last_update(s)}",
        f"         Events: {s.get('events_received', 0)} received, "
        f"{s.get('events_coalesced', 0)} coalesced, {s.get('loads', 0)} loads",
        f"           CPUs: {len(set(present) & set(covered))}/{len(present)} covered "
        f"({_cpu_list(present)})" + (f", missing {_cpu_list(missing)}" if missing else ""),
        f"         Memory: {_memory_line(mem, cov, stale)}",
        f"     elfcorehdr: {used} of {cap} bytes{pct}",
        f"   Crash kernel: {_bytes(int(s.get('crash_kernel_size', 0)))} reserved",
        f" Kernel hotplug: {'yes' if s.get('kernel_hotplug_support') else 'no'}",
        f"          Stale: {'yes' if stale else 'no'}"
        + (f" ({s['stale_reason']})" if s.get("stale_reason") else ""),
    ]
    limit = int(s.get("load_limit_panic", -1))
    if limit >= 0:  # only when the kernel sets a limit (kernel.kexec_load_limit_panic)
        lines.append(
            f"     Load limit: {limit} crash-image load{'' if limit == 1 else 's'} left "
            "this boot (kernel.kexec_load_limit_panic)"
        )
    if s.get("last_error"):
        lines.append(f"     Last error: {s['last_error']}")
    return "\n".join(lines)


def _kernel_loaded(sysroot: Path) -> str:
    try:
        loaded = read_crash_loaded(sysroot)
    except KdumpdError as err:
        return f"unknown ({err})"
    if loaded is None:
        return "unknown (no /sys/kernel/kexec_crash_loaded)"
    return "yes" if loaded else "no"


def run(args: argparse.Namespace) -> int:
    from kdumpd.interfaces.dbusclient import DaemonUnreachable, get_state

    try:
        state = get_state(bus_address=args.bus_address, timeout=3.0)
    except DaemonUnreachable as err:
        unreachable = str(err)
    else:
        if args.json:
            print(json.dumps(state, indent=1, sort_keys=True))
        else:
            print(format_state(state))
        return exit_code(state)

    from kdumpd.daemon.statefile import StateFile

    statefile = StateFile(args.state_dir)
    rec = statefile.load()
    kernel = _kernel_loaded(args.sysroot)
    if rec is None and kernel.startswith("unknown"):
        raise KdumpdError(f"{unreachable}, and no {statefile.path}")
    if args.json:
        print(
            json.dumps(
                {
                    "daemon": None,
                    "recorded": None if rec is None else dataclasses.asdict(rec),
                    "kernel_crash_loaded": kernel,
                },
                indent=1,
                sort_keys=True,
            )
        )
    else:
        lines = [
            "○ kdumpd - hotplug-aware kdump image daemon",
            f"         Active: inactive (not on the bus: {unreachable})",
            f"  Kernel loaded: {kernel}",
        ]
        if rec is not None:
            when = dt.datetime.fromtimestamp(rec.time, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            lines += [
                f"  Last recorded: {statefile.path} at {when} (pid {rec.pid})",
                f"     Generation: {rec.generation}, backend {rec.backend or '-'}, "
                f"{'loaded' if rec.loaded else 'not loaded'}, {rec.loads} loads",
            ]
        print("\n".join(lines))
    return EXIT_NO_IMAGE
