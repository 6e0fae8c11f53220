"""``kernel.kexec_load_limit_panic``: how many crash-image loads the kernel still takes.

Since 6.3 (the ``kexec_load_limit_*`` sysctls, kernel/kexec_core.c;
docs/kernel-interfaces.md §11) the kernel counts every crash-type ``kexec_load`` and
``kexec_file_load`` call, unloads and failed calls included, against
``/proc/sys/kernel/kexec_load_limit_panic``; ``-1`` means no limit.  The value only
goes down (a write can lower it, never raise it) and at 0 every further crash load or
unload fails with EPERM until the next boot.  The image loaded last stays loaded, but
kdumpd can no longer bring it up to date, so a back-end that loads once per burst
(``file``, ``segment`` without in-kernel updates) would use the limit up silently.

:class:`LoadLimit` reads the sysctl (through the sysroot reader, no kexec lock) at start
and after every load attempt, publishes what is left (``LoadLimitPanic``; -1 when
there is no limit or no such sysctl) and warns in the journal once what is left falls
to :data:`WARN_FRACTION` of the value first seen or to :data:`WARN_LOADS`, whichever is
larger; then again each time it halves, and for each of the last :data:`WARN_LOADS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from kdumpd.system.kexecsysfs import read_load_limit_panic

log = logging.getLogger("kdumpd.daemon.loadlimit")

#: Warn when no more than this share of the first-seen limit is left ...
WARN_FRACTION = 0.10
#: ... or no more than this many loads, whichever is larger.
WARN_LOADS = 10
#: The published value when the kernel sets no limit (or has no such sysctl).
NO_LIMIT = -1

Reader = Callable[[Path], "int | None"]


class LoadLimit:
    """Follows ``kexec_load_limit_panic`` for one daemon (see the module docstring)."""

    def __init__(self, sysroot: str | Path = "/", *, read: Reader = read_load_limit_panic) -> None:
        self.sysroot = Path(sysroot)
        self.read = read
        self.first: int | None = None  # the largest value seen (the budget at start)
        self._warned: int | None = None  # what was left at the last warning

    @property
    def threshold(self) -> int:
        """At or below this many loads left, the journal hears about it."""
        if self.first is None:
            return 0
        return max(WARN_LOADS, int(self.first * WARN_FRACTION))

    def refresh(self, *, per_burst: bool = True, backend: str = "") -> int:
        """Read the sysctl; returns what is left (:data:`NO_LIMIT` without a limit).
        ``per_burst``: the back-end loads once per hotplug burst (so routine bursts
        use the limit up), which the warning says."""
        try:
            value = self.read(self.sysroot)
        except Exception as err:  # a reader error must never fail a load
            log.debug("cannot read kexec_load_limit_panic: %s", err)
            value = None
        if value is None or value < 0:
            return NO_LIMIT
        if self.first is None or value > self.first:
            self.first = value
        if value <= self.threshold and self._should_warn(value):
            self._warned = value
            self._warn(value, per_burst, backend)
        return value

    def _should_warn(self, left: int) -> bool:
        last = self._warned
        if last is None:
            return True
        if left >= last:
            return False
        return left <= WARN_LOADS or left <= last // 2

    def _warn(self, left: int, per_burst: bool, backend: str) -> None:
        fields = {"LOAD_LIMIT_PANIC": left}
        if left == 0:
            log.error(
                "kernel.kexec_load_limit_panic is 0: the kernel refuses every further "
                "crash-image load and unload (EPERM) until reboot; the loaded image stays "
                "but can no longer follow hotplug",
                extra=fields,
            )
            return
        how = (
            f"backend {backend} loads once per hotplug burst, so about {left} more bursts use it up"
            if per_burst
            else "this back-end loads only at start, on Reload and after a RAM removal"
        )
        log.warning(
            "kernel.kexec_load_limit_panic: %d crash-image load%s left this boot (%d when "
            "first read; every load and unload counts); %s; at 0 the kernel refuses loads "
            "until reboot",
            left,
            "" if left == 1 else "s",
            self.first,
            how,
            extra=fields,
        )
