"""Synthetic hotplug storms, as replay records (in memory or written to a file).

The reference storm is the 32 → 512 GiB resize of issue 3: 480 GiB of RAM added in
3,840 memory blocks of 128 MiB, one ``online`` uevent per block (the event the
distribution udev rules reload on), each event growing a ``System RAM`` resource in
``/proc/iomem`` by one block and writing the block's ``online``/``state`` files.
``with_add=True`` also emits the block's preceding ``add`` uevent (7,680 events).

CPU storms bring CPUs ``first..last`` present and online (``add`` + ``online``),
writing ``present``/``online`` lists and the CPU's ``crash_notes`` files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from kdumpd.core.iomem import IOMEM_LINE
from kdumpd.core.topology import format_cpulist
from kdumpd.events.replay import ReplayRecord, write_replay

BLOCK_SIZE = 128 << 20
RESIZE_BLOCKS = 3840  # (512 - 32) GiB / 128 MiB


def _top_level(iomem: str) -> list[tuple[int, int, int, str]]:
    """(line index, start, end, name) of every depth-0 line."""
    out = []
    for i, line in enumerate(iomem.splitlines()):
        m = IOMEM_LINE.match(line)
        if m and not m.group(1):
            out.append((i, int(m.group(2), 16), int(m.group(3), 16), m.group(4)))
    return out


def hotplug_region(iomem: str, blocks: int, block_size: int = BLOCK_SIZE) -> int:
    """First block-aligned address above all System RAM where ``blocks`` fit in a hole."""
    top = _top_level(iomem)
    ram_end = max((e for _, _, e, n in top if "System RAM" in n), default=(4 << 30) - 1)
    start = (ram_end + block_size) // block_size * block_size
    size = blocks * block_size
    for _, s, e, _ in sorted(top, key=lambda t: t[1]):
        if s <= start + size - 1 and start <= e:
            start = (e + block_size) // block_size * block_size
    return start


def with_ram(iomem: str, start: int, end: int, name: str = "System RAM") -> str:
    """``iomem`` with a top-level ``start-end : name`` line inserted in address order."""
    lines = iomem.splitlines()
    new = f"{start:08x}-{end:08x} : {name}"
    insert_at = len(lines)
    for i, s, _, _ in _top_level(iomem):
        if s > start:
            insert_at = i
            break
    lines.insert(insert_at, new)
    return "\n".join(lines) + "\n"


def memory_resize_storm(
    base_iomem: str,
    *,
    blocks: int = RESIZE_BLOCKS,
    block_size: int = BLOCK_SIZE,
    interval: float = 0.0,
    with_add: bool = False,
    start: int | None = None,
) -> Iterator[ReplayRecord]:
    """Yield the records of a memory hot-add storm (``interval`` seconds apart)."""
    region = hotplug_region(base_iomem, blocks, block_size) if start is None else start
    first_index = region // block_size
    t = 0.0
    seq = 100_000
    for k in range(blocks):
        idx = first_index + k
        dev = f"/devices/system/memory/memory{idx}"
        sysdir = f"sys{dev}"
        if with_add:
            seq += 1
            yield ReplayRecord(
                t,
                "add",
                "memory",
                dev,
                ((f"{sysdir}/online", "0\n"), (f"{sysdir}/state", "offline\n")),
                seq,
            )
        iomem = with_ram(base_iomem, region, region + (k + 1) * block_size - 1)
        seq += 1
        yield ReplayRecord(
            t,
            "online",
            "memory",
            dev,
            (
                ("proc/iomem", iomem),
                (f"{sysdir}/online", "1\n"),
                (f"{sysdir}/state", "online\n"),
            ),
            seq,
        )
        t += interval


def cpu_add_storm(
    present: list[int],
    first: int,
    last: int,
    *,
    notes_base: int = 0x100000000,
    notes_stride: int = 0x40000,
    notes_size: int = 424,
    interval: float = 0.0,
) -> Iterator[ReplayRecord]:
    """CPUs ``first..last`` become present and online: ``add`` then ``online`` each."""
    now = sorted(set(present))
    t = 0.0
    seq = 200_000
    for cpu in range(first, last + 1):
        if cpu not in now:
            now = sorted([*now, cpu])
        dev = f"/devices/system/cpu/cpu{cpu}"
        d = f"sys{dev}"
        listing = format_cpulist(now) + "\n"
        seq += 1
        yield ReplayRecord(
            t,
            "add",
            "cpu",
            dev,
            (
                (f"{d}/crash_notes", f"{notes_base + cpu * notes_stride:x}\n"),
                (f"{d}/crash_notes_size", f"{notes_size}\n"),
                (f"{d}/online", "0\n"),
                ("sys/devices/system/cpu/present", listing),
            ),
            seq,
        )
        seq += 1
        yield ReplayRecord(
            t,
            "online",
            "cpu",
            dev,
            ((f"{d}/online", "1\n"), ("sys/devices/system/cpu/online", listing)),
            seq,
        )
        t += interval


def system_ram(iomem: str) -> int:
    """Bytes of top-level ``System RAM`` in ``iomem``."""
    return sum(e - s + 1 for _, s, e, n in _top_level(iomem) if n == "System RAM")


def grow_ram(iomem: str, total: int) -> str:
    """``iomem`` with one ``System RAM`` range added above the existing RAM (in a
    hole) so that System RAM adds up to ``total`` bytes, to the page (firmware ranges
    such as ``00001000-0009fbff`` are not page multiples)."""
    missing = (total - system_ram(iomem) + 4095) // 4096 * 4096
    if missing <= 0:
        return iomem
    start = hotplug_region(iomem, 1, 1 << 30)
    return with_ram(iomem, start, start + missing - 1)


def write_memory_storm(
    sysroot: str | Path, out: str | Path, *, base_gib: int | None = None, **kwargs: object
) -> int:
    """Write the memory resize storm for ``sysroot``'s /proc/iomem to ``out``.

    ``base_gib``: first grow the sysroot's System RAM to that many GiB (rewriting its
    ``proc/iomem``), so the storm starts from that size: ``base_gib=32`` and the
    default 3,840 blocks are the 32 -> 512 GiB resize."""
    iomem_path = Path(sysroot) / "proc/iomem"
    base = iomem_path.read_text()
    if base_gib is not None:
        base = grow_ram(base, base_gib << 30)
        iomem_path.write_text(base)
    return write_replay(out, memory_resize_storm(base, **kwargs))  # type: ignore[arg-type]
