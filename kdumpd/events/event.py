"""One CPU or memory hotplug uevent, as a plain frozen value.

Sources (udev, replay, synthetic storms) build :class:`HotplugEvent` through
:func:`event_from_fields`; garbage (unknown subsystem or action, a devpath outside
``/devices/system/{cpu,memory}``) raises :class:`~kdumpd.core.errors.InputError`, which
the source logs as one line and counts as dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kdumpd.core.errors import InputError

#: Longest devpath accepted (the kernel's are far shorter; PATH_MAX bounds them).
MAX_DEVPATH = 4096
SUBSYSTEMS = frozenset({"cpu", "memory"})
ACTIONS = frozenset({"add", "remove", "online", "offline", "change", "move", "bind", "unbind"})


@dataclass(frozen=True, slots=True)
class HotplugEvent:
    action: str
    subsystem: str
    devpath: str
    seqnum: int | None = None
    received_at: float = 0.0  # the source's clock (monotonic seconds)


EventSink = Callable[[HotplugEvent], None]


def event_from_fields(
    action: object,
    subsystem: object,
    devpath: object,
    seqnum: object = None,
    received_at: float = 0.0,
    *,
    source: str = "event",
) -> HotplugEvent:
    """Validate raw fields into a :class:`HotplugEvent` (InputError names ``source``)."""
    if not isinstance(subsystem, str) or subsystem not in SUBSYSTEMS:
        raise InputError(source, f"subsystem {subsystem!r} is not cpu or memory")
    if not isinstance(action, str) or action not in ACTIONS:
        raise InputError(source, f"unknown action {action!r}")
    if not isinstance(devpath, str) or not devpath.startswith(f"/devices/system/{subsystem}"):
        raise InputError(source, f"devpath {devpath!r} is not below /devices/system/{subsystem}")
    # Kernel devpaths are printable ASCII (kobject names); anything else (a NUL, a
    # control character, a lone surrogate from a JSON escape) would travel into logs,
    # the journal and D-Bus.
    if not devpath.isascii() or not devpath.isprintable() or "/../" in devpath + "/":
        raise InputError(source, f"devpath {devpath[:120]!r} is malformed")
    if len(devpath) > MAX_DEVPATH:
        raise InputError(source, f"devpath of {len(devpath)} characters is too long")
    seq: int | None
    if seqnum is None or seqnum == "":
        seq = None
    elif isinstance(seqnum, int) and not isinstance(seqnum, bool):
        seq = seqnum
    # ASCII digits only: str.isdigit() is also true for '²', which int() refuses, and
    # at most 20 of them (a u64), so int() never meets Python's digit limit.
    elif isinstance(seqnum, str) and seqnum.isascii() and seqnum.isdigit() and len(seqnum) <= 20:
        seq = int(seqnum)
    else:
        raise InputError(source, f"seqnum {str(seqnum)[:40]!r} is not a number")
    if seq is not None and not 0 <= seq < 1 << 64:
        raise InputError(source, f"seqnum {seq} is not a 64-bit unsigned number")
    return HotplugEvent(action, subsystem, devpath, seq, received_at)
