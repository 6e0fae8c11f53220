"""Coalesce a burst of hotplug events into one regeneration.

:class:`Debouncer` is pure bookkeeping with an injectable clock: a burst is due
``quiet`` seconds after its last event, but never later than ``max_staleness``
after its first one, so an endless storm still gets applied.  :class:`AsyncDebouncer`
drives it on an asyncio loop with a single timer that is only re-armed when it
fires early (no per-event timer churn, no wake-ups while idle).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Burst:
    """What one trigger covers: ``events`` events seen between ``first_at`` and ``last_at``."""

    events: int
    first_at: float
    last_at: float
    reason: str  # "quiet" or "staleness"


class Debouncer:
    def __init__(self, quiet: float, max_staleness: float, clock: Clock = time.monotonic) -> None:
        if quiet < 0 or max_staleness <= 0 or max_staleness < quiet:
            raise ValueError("need 0 <= quiet <= max_staleness and max_staleness > 0")
        self.quiet = quiet
        self.max_staleness = max_staleness
        self.clock = clock
        self.received = 0
        self.coalesced = 0
        self.bursts = 0
        self._pending = 0
        self._first = 0.0
        self._last = 0.0

    @property
    def pending(self) -> int:
        return self._pending

    def event(self, at: float | None = None) -> None:
        now = self.clock() if at is None else at
        self.received += 1
        if self._pending == 0:
            self._first = now
        self._pending += 1
        self._last = now

    def deadline(self) -> float | None:
        """When the pending burst is due (clock time), or None if nothing is pending."""
        if self._pending == 0:
            return None
        return min(self._last + self.quiet, self._first + self.max_staleness)

    def due(self, now: float | None = None) -> bool:
        d = self.deadline()
        return d is not None and (self.clock() if now is None else now) >= d

    def take(self, now: float | None = None) -> Burst:
        """Close the pending burst (call when :meth:`due`); counts the coalesced events."""
        if self._pending == 0:
            raise RuntimeError("no pending events")
        t = self.clock() if now is None else now
        reason = "quiet" if t >= self._last + self.quiet else "staleness"
        burst = Burst(self._pending, self._first, self._last, reason)
        self.coalesced += self._pending - 1
        self.bursts += 1
        self._pending = 0
        return burst


class AsyncDebouncer:
    """Calls ``on_burst(burst)`` on the loop when a burst is due."""

    def __init__(
        self,
        debouncer: Debouncer,
        on_burst: Callable[[Burst], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.d = debouncer
        self.on_burst = on_burst
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def event(self) -> None:
        self.d.event()
        if self._timer is None:
            self._arm()

    def _arm(self) -> None:
        deadline = self.d.deadline()
        if deadline is None:
            self._timer = None
            return
        # Debouncer times are on its own clock; convert to a delay for the loop.
        delay = max(0.0, deadline - self.d.clock())
        self._timer = self.loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self.d.pending == 0:
            return
        if not self.d.due():
            self._arm()  # more events came in meanwhile: sleep until the new deadline
            return
        burst = self.d.take()
        self.on_burst(burst)

    def flush(self) -> Burst | None:
        """Close any pending burst now (shutdown, replay end)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.d.pending == 0:
            return None
        burst = self.d.take()
        self.on_burst(burst)
        return burst

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
