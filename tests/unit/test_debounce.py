from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdumpd.events.debounce import AsyncDebouncer, Burst, Debouncer


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_burst_is_due_after_quiet_period() -> None:
    c = FakeClock()
    d = Debouncer(0.1, 1.0, c)
    for i in range(5):
        c.t = i * 0.01
        d.event()
    assert not d.due()
    c.t = 0.04 + 0.1
    assert d.due()
    b = d.take()
    assert (b.events, b.reason) == (5, "quiet")
    assert d.coalesced == 4 and d.received == 5 and d.pending == 0
    assert d.deadline() is None


def test_endless_storm_is_bounded_by_staleness() -> None:
    c = FakeClock()
    d = Debouncer(0.1, 1.0, c)
    bursts = []
    for i in range(3000):  # one event every 1 ms for 3 s: never quiet
        c.t = i * 0.001
        d.event()
        if d.due():
            bursts.append(d.take())
    assert [b.reason for b in bursts] == ["staleness"] * len(bursts)
    assert 2 <= len(bursts) <= 3
    for b in bursts:
        assert b.last_at - b.first_at <= 1.0 + 0.0011  # one event step of slack


def test_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        Debouncer(2.0, 1.0)


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=300),
    quiet=st.floats(min_value=0.001, max_value=0.2),
    bound=st.floats(min_value=0.2, max_value=2.0),
)
def test_any_schedule_final_state_applied_and_loads_bounded(
    gaps: list[float], quiet: float, bound: float
) -> None:
    """Model: each event changes the topology to version i; each burst applies the
    version current at that moment.  After the storm the last applied version is the
    final one, and the number of applies is bounded by the quiet gaps and the storm
    length / staleness bound."""
    c = FakeClock()
    d = Debouncer(quiet, bound, c)
    version = 0
    applied: list[int] = []

    def advance_to(t: float) -> None:
        # fire every deadline that passes before t (as the loop timer would)
        while (dl := d.deadline()) is not None and dl <= t:
            c.t = dl
            d.take()
            applied.append(version)
        c.t = t

    t = 0.0
    for g in gaps:
        t += g
        advance_to(t)
        version += 1
        d.event()
    advance_to(t + bound + 1)
    assert applied and applied[-1] == version
    quiet_gaps = sum(1 for g in gaps[1:] if g >= quiet)
    span = t - gaps[0]
    assert len(applied) <= quiet_gaps + 1 + int(span / bound) + 1
    assert len(applied) <= len(gaps)
    assert d.received == len(gaps)
    assert d.coalesced == len(gaps) - len(applied)


async def test_async_debouncer_fires_once_per_burst() -> None:
    got: list[Burst] = []
    ad = AsyncDebouncer(Debouncer(0.02, 0.5), got.append)
    for _ in range(100):
        ad.event()
    await asyncio.sleep(0.005)
    ad.event()
    assert got == []
    await asyncio.sleep(0.06)
    assert len(got) == 1 and got[0].events == 101
    await asyncio.sleep(0.05)
    assert len(got) == 1  # no wake-up storm afterwards
    ad.event()
    assert ad.flush() is not None and len(got) == 2


async def test_async_debouncer_staleness_bound_under_an_endless_storm() -> None:
    """Events every 2 ms (well inside quiet = 20 ms) forever: the loop timer must still
    close a burst no later than max_staleness after its first event, again and again."""
    import time

    got: list[tuple[float, Burst]] = []
    bound, quiet = 0.1, 0.02
    ad = AsyncDebouncer(Debouncer(quiet, bound), lambda b: got.append((time.monotonic(), b)))
    sent: list[float] = []
    end = time.monotonic() + 0.6
    while time.monotonic() < end:
        ad.event()
        sent.append(time.monotonic())  # after event(): never before the burst's first_at
        await asyncio.sleep(0.002)
    sent.append(time.monotonic())  # the loop's end closes the last gap
    ad.close()
    assert len(got) >= 3, got  # ~0.6 s / 0.1 s bursts, none waited for a quiet gap
    # An unbounded debouncer would fire once, ~0.6 s after the first event; the bound
    # (plus loop scheduling slack on a busy CI machine) is far below that.
    slack = 0.1
    for fired, burst in got:
        gaps = [b - a for a, b in itertools.pairwise(sent) if burst.first_at <= a < fired]
        if burst.reason == "quiet":  # only legitimate if the loop really paused >= quiet
            assert max(gaps, default=0.0) >= quiet, (burst, max(gaps, default=0.0))
        else:
            assert burst.reason == "staleness"
        assert fired - burst.first_at <= bound + slack, (fired - burst.first_at, burst)
