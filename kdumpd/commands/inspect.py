"""`kdumpd inspect [--sysroot DIR] [--arch ARCH] [--json]`: the topology snapshot.

Reads what a crash image describes (CPUs and their crash_notes, System RAM,
crashkernel reservations, vmcoreinfo, kernel text, memory blocks, kernel
capabilities) from ``DIR`` (default ``/``) via :func:`kdumpd.system.topologyreader.read_topology`
and prints a readable summary, or with ``--json`` exactly one JSON object.

Exit status: 0 ok, 1 bad input (one line on stderr naming the file, line and
problem), 2 usage.

JSON keys (stable; addresses and sizes are integers, absent facts are ``null``):

``sysroot`` (str), ``arch`` (str), ``release`` (str|null),
``cpus``: ``{"possible": [int], "present": [int], "online": [int]}``,
``crash_notes``: ``[{"cpu", "address", "size"}]`` ascending by CPU,
``system_ram``: ``[{"start", "end", "size"}]`` (every ``System RAM*`` line, nested or
not, ascending; ``end`` inclusive), ``system_ram_bytes`` (int),
``crashkernel``: ``[{"start", "end", "size"}]``, ``crashkernel_bytes`` (int),
``kernel_code``: ``{"start", "end", "size"}|null``,
``vmcoreinfo``: ``{"address", "size"}|null``,
``kernel_text``: ``{"vaddr", "size", "source"}|null`` (source: ``kcore``,
``kcore-range``, ``kallsyms`` or ``kallsyms-estimate``), ``page_offset`` (int|null),
``memory``: ``{"block_size": int|null, "blocks": int, "online": int, "offline": int,
"states": {state: count}}``,
``capabilities``: ``{"cpu_crash_hotplug", "memory_crash_hotplug"`` (bool|null),
``"crash_hotplug_config"`` (bool: the kernel has CONFIG_CRASH_HOTPLUG),
``"crash_elfcorehdr_size", "kexec_crash_size"`` (int|null),
``"kexec_crash_loaded"`` (bool|null), ``"lockdown"`` (str|null)``}``,
``iomem_lines`` (int).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from kdumpd.commands.common import add_sysroot_arguments
from kdumpd.core.errors import InputError
from kdumpd.core.topology import MemRange, Topology, format_cpulist
from kdumpd.system.topologyreader import read_topology

NAME = "inspect"
HELP = "print the topology snapshot a crash image is built from"

#: Longest list printed in full by the text summary; longer ones are elided.
MAX_LISTED = 12


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_sysroot_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    sysroot: str = args.sysroot
    if not os.path.isdir(sysroot):
        raise InputError(sysroot, "sysroot is not a directory")
    topology = read_topology(sysroot, arch=args.arch)
    if args.json:
        print(json.dumps(to_json(topology, sysroot), sort_keys=False))
    else:
        print(summary(topology, sysroot))
    return 0


# ---------------------------------------------------------------------------- JSON


def _range(r: MemRange) -> dict[str, int]:
    return {"start": r.start, "end": r.end, "size": r.size}


def to_json(t: Topology, sysroot: str) -> dict[str, Any]:
    """The ``--json`` object (keys documented in the module docstring)."""
    caps = t.capabilities
    states = Counter(b.state or "unknown" for b in t.memory_blocks)
    ram = t.system_ram
    crash = t.crashkernel
    code = t.kernel_code
    return {
        "sysroot": sysroot,
        "arch": t.arch,
        "release": caps.release,
        "cpus": {
            "possible": list(t.possible_cpus),
            "present": list(t.present_cpus),
            "online": list(t.online_cpus),
        },
        "crash_notes": [
            {"cpu": n.cpu, "address": n.address, "size": n.size} for n in t.crash_notes
        ],
        "system_ram": [_range(r) for r in ram],
        "system_ram_bytes": sum(r.size for r in ram),
        "crashkernel": [_range(r) for r in crash],
        "crashkernel_bytes": sum(r.size for r in crash),
        "kernel_code": None if code is None else _range(code),
        "vmcoreinfo": None
        if t.vmcoreinfo is None
        else {"address": t.vmcoreinfo.address, "size": t.vmcoreinfo.size},
        "kernel_text": None
        if t.kernel_text is None
        else {
            "vaddr": t.kernel_text.vaddr,
            "size": t.kernel_text.size,
            "source": t.kernel_text.source,
        },
        "page_offset": t.page_offset,
        "memory": {
            "block_size": t.memory_block_size,
            "blocks": len(t.memory_blocks),
            "online": states.get("online", 0),
            "offline": states.get("offline", 0),
            "states": dict(sorted(states.items())),
        },
        "capabilities": {
            "cpu_crash_hotplug": caps.cpu_crash_hotplug,
            "memory_crash_hotplug": caps.memory_crash_hotplug,
            "crash_hotplug_config": caps.crash_hotplug_config,
            "crash_elfcorehdr_size": caps.crash_elfcorehdr_size,
            "kexec_crash_loaded": caps.kexec_crash_loaded,
            "kexec_crash_size": caps.kexec_crash_size,
            "lockdown": caps.lockdown,
        },
        "iomem_lines": len(t.iomem),
    }


# ---------------------------------------------------------------------------- text


def cpulist(cpus: Sequence[int]) -> str:
    """``(0, 1, 2, 3, 8)`` → ``"0-3,8"``; ``"none"`` for no CPUs."""
    return format_cpulist(cpus) or "none"


def human_size(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.2f} {unit}"
    return f"{n} B"


def _elide(lines: list[str]) -> list[str]:
    if len(lines) <= MAX_LISTED:
        return lines
    half = MAX_LISTED // 2
    return [*lines[:half], f"... {len(lines) - 2 * half} more ...", *lines[-half:]]


def _yes_no(value: bool | None, absent: str = "file absent") -> str:
    return absent if value is None else ("yes" if value else "no")


def summary(t: Topology, sysroot: str) -> str:
    """The readable summary printed without ``--json``."""
    caps = t.capabilities
    out: list[str] = []

    def row(label: str, text: str) -> None:
        out.append(f"  {label:<16}{text}")

    def more(text: str) -> None:
        out.append(f"  {'':<16}{text}")

    out.append(f"kdumpd inspect: {sysroot}")
    row("arch", t.arch)
    row("kernel", caps.release or "unknown (no /proc/sys/kernel/osrelease)")
    row(
        "CPUs",
        f"possible {cpulist(t.possible_cpus)} ({len(t.possible_cpus)}), "
        f"present {cpulist(t.present_cpus)} ({len(t.present_cpus)}), "
        f"online {cpulist(t.online_cpus)} ({len(t.online_cpus)})",
    )
    if t.crash_notes:
        present = set(t.present_cpus)
        missing = sorted(present - {n.cpu for n in t.crash_notes})
        row(
            "crash_notes",
            f"{len(t.crash_notes)} CPUs ({cpulist([n.cpu for n in t.crash_notes])})"
            + (f"; present without notes: {cpulist(missing)}" if missing else ""),
        )
        for line in _elide(
            [f"cpu{n.cpu:<5} {n.address:#018x}  {n.size} bytes" for n in t.crash_notes]
        ):
            more(line)
    else:
        row("crash_notes", "none (kernel without CONFIG_CRASH_DUMP, or not root)")

    ram = t.system_ram
    row("System RAM", f"{len(ram)} ranges, {human_size(sum(r.size for r in ram))}")
    for line in _elide([f"{r.start:#018x}-{r.end:#018x}  {human_size(r.size)}" for r in ram]):
        more(line)
    crash = t.crashkernel
    if crash:
        plural = "s" if len(crash) != 1 else ""
        row("crashkernel", f"{len(crash)} range{plural}, {human_size(sum(r.size for r in crash))}")
        for r in crash:
            more(f"{r.start:#018x}-{r.end:#018x}  {human_size(r.size)}")
    else:
        row("crashkernel", "none reserved (no 'Crash kernel' in /proc/iomem)")
    code = t.kernel_code
    row("Kernel code", "absent" if code is None else f"{code.start:#x}-{code.end:#x}")
    vi = t.vmcoreinfo
    row("vmcoreinfo", "absent" if vi is None else f"{vi.address:#x}, {vi.size} bytes")
    kt = t.kernel_text
    row(
        "kernel text",
        "unknown (no /proc/kcore or /proc/kallsyms)"
        if kt is None
        else f"{kt.vaddr:#x} + {kt.size:#x} (from {kt.source})",
    )
    row("page offset", "unknown" if t.page_offset is None else f"{t.page_offset:#x}")

    states = Counter(b.state or "unknown" for b in t.memory_blocks)
    if t.memory_block_size is None:
        row("memory blocks", "none (no CONFIG_MEMORY_HOTPLUG sysfs)")
    else:
        detail = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none listed"
        row(
            "memory blocks",
            f"{len(t.memory_blocks)} x {human_size(t.memory_block_size)}: {detail}",
        )

    hp_cpu = _yes_no(caps.cpu_crash_hotplug)
    hp_mem = _yes_no(caps.memory_crash_hotplug)
    row(
        "crash hotplug",
        f"cpu {hp_cpu}, memory {hp_mem}; CONFIG_CRASH_HOTPLUG "
        + ("yes" if caps.crash_hotplug_config else "no"),
    )
    row(
        "kexec",
        f"crash image loaded {_yes_no(caps.kexec_crash_loaded)}, reservation "
        + ("unknown" if caps.kexec_crash_size is None else human_size(caps.kexec_crash_size))
        + ", crash_elfcorehdr_size "
        + ("absent" if caps.crash_elfcorehdr_size is None else str(caps.crash_elfcorehdr_size)),
    )
    row("lockdown", caps.lockdown or "unknown (no securityfs lockdown file)")
    row("iomem", f"{len(t.iomem)} lines")
    return "\n".join(out)
