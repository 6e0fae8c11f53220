from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdumpd.daemon.control import Busy, Controller, Operations
from kdumpd.daemon.reconciler import Reconciler
from kdumpd.daemon.state import ImageState, StateStore
from kdumpd.events.event import HotplugEvent
from tests.unit.daemon_fakes import RecordingBackend, TopologyHolder, no_sleep

EV = HotplugEvent("online", "memory", "/devices/system/memory/memory512")


def make(
    tmp_path: Path, holder: TopologyHolder, backend: RecordingBackend, **kw: object
) -> Reconciler:
    return Reconciler(
        StateStore(),
        backend,
        sysroot=tmp_path,
        state_dir=tmp_path / "state",
        read_topology=kw.pop("read_topology", holder),  # type: ignore[arg-type]
        quiet=kw.pop("quiet", 0.005),  # type: ignore[arg-type]
        max_staleness=kw.pop("max_staleness", 0.05),  # type: ignore[arg-type]
        sleep=no_sleep,
        **kw,  # type: ignore[arg-type]
    )


async def test_start_loads_once_and_burst_applies_once(tmp_path: Path) -> None:
    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend)
    assert isinstance(Operations(r), Controller)
    await r.start()
    assert len(backend.applied) == 1 and r.store.current.state == ImageState.LOADED
    for _ in range(200):
        holder.add_blocks()
        r.event(EV)
    await r.settle()
    s = r.store.current
    assert len(backend.applied) == 2
    assert backend.applied_ends[-1] == holder.ram_end
    assert s.loads == 2 and s.generation == 2 and not s.stale
    assert s.events_received == 200 and s.events_coalesced == 199
    assert s.covered_ranges[-1][1] == holder.ram_end
    await r.stop()


async def test_burst_without_topology_change_loads_nothing(tmp_path: Path) -> None:
    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend)
    await r.start()
    for _ in range(10):
        r.event(EV)  # e.g. `change` uevents: nothing in the image changes
    await r.settle()
    assert len(backend.applied) == 1
    assert r.store.current.regenerations == 1 and not r.store.current.stale
    await r.stop()


async def test_change_during_load_is_applied_again(tmp_path: Path) -> None:
    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend)
    await r.start()
    calls = 0

    def grow_during_first(_: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            holder.add_blocks(3)  # hotplug completes while the load syscall runs

    backend.on_apply = grow_during_first
    holder.add_blocks()
    r.event(EV)
    await r.settle()
    # the burst load + one recheck load, then a third read finds nothing new
    assert len(backend.applied) == 3
    assert backend.applied_ends[-1] == holder.ram_end
    assert r.store.current.last_trigger == "recheck"
    await r.stop()


async def test_restart_adopts_recorded_image(tmp_path: Path) -> None:
    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend)
    await r.start()
    holder.add_blocks(2)
    r.event(EV)
    await r.settle()
    await r.stop()
    assert len(backend.applied) == 2
    # a new daemon, the kernel still has the image: adopt, no load
    r2 = make(tmp_path, holder, backend)
    await r2.start()
    assert len(backend.applied) == 2
    s = r2.store.current
    assert s.generation == 2 and s.state == ImageState.LOADED and not s.stale
    assert s.covered_ranges[-1][1] == holder.ram_end
    await r2.stop()
    # topology moved while no daemon ran: adopt, then one load to reconcile
    holder.add_blocks(1)
    r3 = make(tmp_path, holder, backend)
    await r3.start()
    assert len(backend.applied) == 3 and r3.store.current.generation == 3
    # that load is not an adoption, and the trigger says so
    assert r3.store.current.last_trigger == "adopt: topology changed"
    await r3.stop()


async def test_restart_without_loaded_image_loads(tmp_path: Path) -> None:
    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend)
    await r.start()
    await r.stop()
    backend.loaded = False  # e.g. someone ran `kexec -p -u`
    r2 = make(tmp_path, holder, backend)
    await r2.start()
    assert len(backend.applied) == 2 and r2.store.current.last_trigger == "start"
    await r2.stop()


async def test_unload_while_busy_raises_busy(tmp_path: Path) -> None:
    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend)
    await r.start()
    gate = asyncio.Event()
    orig = backend.apply

    async def slow_apply(req):  # type: ignore[no-untyped-def]
        await gate.wait()
        return await orig(req)

    backend.apply = slow_apply  # type: ignore[method-assign]
    task = asyncio.create_task(Operations(r).reload())
    await asyncio.sleep(0.01)
    with pytest.raises(Busy):
        await Operations(r).unload()
    gate.set()
    await task
    await Operations(r).unload()
    assert backend.unloaded == 1 and r.store.current.state == ImageState.UNLOADED
    rep = await Operations(r).report()
    assert rep["state"] == "unloaded" and rep["loads"] == 2
    await r.stop()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    schedule=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from([0.0, 0.0, 0.001, 0.004, 0.02])),
        min_size=1,
        max_size=40,
    )
)
def test_any_schedule_ends_with_image_of_final_topology(
    tmp_path: Path, schedule: list[tuple[int, float]]
) -> None:
    async def scenario() -> None:
        holder, backend = TopologyHolder(), RecordingBackend()
        state = tmp_path / f"s{id(schedule)}"
        r = Reconciler(
            StateStore(),
            backend,
            sysroot=tmp_path,
            state_dir=state,
            read_topology=holder,
            quiet=0.003,
            max_staleness=0.01,
            sleep=no_sleep,
        )
        await r.start()
        changes = 0
        for add, wait in schedule:
            if add:
                holder.add_blocks(add)
                changes += 1
            r.event(EV)
            if wait:
                await asyncio.sleep(wait)
        await r.settle()
        assert backend.applied_ends[-1] == max(
            e.end for e in holder.current.iomem if "System RAM" in e.name
        )
        assert not r.store.current.stale
        # never more loads than topology changes (+ the initial one), never one for nothing
        assert len(backend.applied) <= changes + 1
        ends = backend.applied_ends
        assert all(a != b for a, b in itertools.pairwise(ends))
        await r.stop()

    asyncio.run(scenario())


async def test_image_build_failure_is_a_state_not_a_crash(tmp_path: Path) -> None:
    from kdumpd.core.errors import UnsupportedError
    from kdumpd.daemon.reconciler import default_image_factory

    holder, backend = TopologyHolder(), RecordingBackend()
    real = default_image_factory()
    broken = True

    def factory(topology):  # type: ignore[no-untyped-def]
        if broken:
            raise UnsupportedError("arch 'm68k' is not supported")
        return real(topology)

    r = make(tmp_path, holder, backend, image_factory=factory, retry_interval=3600)
    await r.start()
    s = r.store.current
    assert s.state == ImageState.FAILED and "m68k" in s.last_error
    assert backend.applied == []
    broken = False
    r.request("retry")
    await r.settle()
    assert r.store.current.state == ImageState.LOADED and len(backend.applied) == 1
    await r.stop()


async def test_pending_events_published_during_a_storm(tmp_path: Path) -> None:
    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend, quiet=10.0, max_staleness=20.0)
    await r.start()
    seen: list[int] = []
    r.store.subscribe(
        lambda st, ch: seen.append(ch["pending_events"]) if "pending_events" in ch else None
    )
    for _ in range(3000):
        r.event(EV)
    assert seen == [1, 1024, 2048]
    assert r.store.current.stale
    await r.stop()


async def test_unreadable_topology_keeps_running_and_retries(tmp_path: Path) -> None:
    from kdumpd.core.errors import InputError

    holder, backend = TopologyHolder(), RecordingBackend()
    fail = True

    def reader(sysroot: Path):  # type: ignore[no-untyped-def]
        if fail:
            raise InputError("/proc/iomem", "line 3: not 'start-end : name'", 3)
        return holder(sysroot)

    r = Reconciler(
        StateStore(),
        backend,
        sysroot=tmp_path,
        state_dir=tmp_path / "s",
        read_topology=reader,
        quiet=0.001,
        max_staleness=0.01,
        retry_interval=0.01,
    )
    await r.start()
    assert "/proc/iomem:3" in r.store.current.last_error and backend.applied == []
    fail = False
    for _ in range(100):
        await asyncio.sleep(0.01)
        if backend.applied:
            break
    await r.settle()
    assert len(backend.applied) == 1 and r.store.current.state == ImageState.LOADED
    await r.stop()


@pytest.mark.parametrize(
    "error",
    [
        "arch 'aarch64' has no Arch back-end",  # get_arch raises
        "CapacityError: placement does not fit",
    ],
)
async def test_model_failure_does_not_block_a_backend_that_ignores_the_model(
    tmp_path: Path, error: str
) -> None:
    from kdumpd.core.errors import UnsupportedError

    holder = TopologyHolder()
    backend = RecordingBackend("file", consumes_image=False, load_syscall="kexec_file_load")

    def factory(topology):  # type: ignore[no-untyped-def]
        raise UnsupportedError(error)

    r = make(tmp_path, holder, backend, image_factory=factory, retry_interval=3600)
    await r.start()
    s = r.store.current
    assert len(backend.applied) == 1 and backend.applied[0].image is None
    assert s.state == ImageState.LOADED and s.loads == 1
    assert s.stale and "no elfcorehdr model" in s.last_error and error in s.last_error
    holder.add_blocks(2)
    r.event(EV)
    await r.settle()
    assert len(backend.applied) == 2 and r.store.current.stale
    await r.stop()
    backend.loaded = True
    r2 = make(tmp_path, holder, backend, image_factory=factory)  # restart: adopt
    await r2.start()
    s = r2.store.current
    assert len(backend.applied) == 2 and backend.adopted == 1
    assert s.state == ImageState.LOADED and s.stale and error in s.last_error
    await r2.stop()


async def test_unload_on_request_sticks_until_load_or_reload(tmp_path: Path) -> None:
    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend)
    await r.start()
    await Operations(r).unload()
    for _ in range(3):  # bursts, a rescan and a retry must not undo the unload
        holder.add_blocks(1)
        r.event(EV)
        await r.settle()
    await Operations(r).rescan()
    r.request("retry")
    await r.settle()
    s = r.store.current
    assert len(backend.applied) == 1 and not backend.loaded
    assert s.state == ImageState.UNLOADED and s.stale
    assert s.memory_ranges[-1][1] == holder.ram_end  # the topology is still followed
    await Operations(r).load()
    assert len(backend.applied) == 2 and r.store.current.state == ImageState.LOADED
    assert backend.applied_ends[-1] == holder.ram_end
    await Operations(r).unload()
    await Operations(r).reload()
    assert len(backend.applied) == 3 and r.store.current.state == ImageState.LOADED
    holder.add_blocks(1)
    r.event(EV)
    await r.settle()
    assert len(backend.applied) == 4
    await r.stop()


async def test_reload_queues_behind_a_burst_and_runs_the_reconfigure_hook(
    tmp_path: Path,
) -> None:
    holder, backend = TopologyHolder(), RecordingBackend()
    calls: list[str] = []
    r = make(tmp_path, holder, backend, reconfigure=lambda: calls.append("reconfigure"))
    await r.start()
    gate = asyncio.Event()
    orig = backend.apply

    async def slow_apply(req):  # type: ignore[no-untyped-def]
        await gate.wait()
        return await orig(req)

    backend.apply = slow_apply  # type: ignore[method-assign]
    holder.add_blocks(1)
    r.event(EV)
    for _ in range(100):  # the burst's load is in progress
        await asyncio.sleep(0.005)
        if r._operation == "reconcile":
            break
    assert r._operation == "reconcile"
    reload = asyncio.create_task(Operations(r).reload())  # no Busy: it waits
    await asyncio.sleep(0.01)
    assert not reload.done() and calls == []
    gate.set()
    await reload
    assert calls == ["reconfigure"]
    assert [q.trigger for q in backend.applied[-2:]] == ["1 events (quiet)", "reload"]
    await r.stop()


async def test_bad_configuration_on_reload_changes_nothing(tmp_path: Path) -> None:
    from kdumpd.core.errors import InputError

    holder, backend = TopologyHolder(), RecordingBackend()

    def bad() -> None:
        raise InputError("KDUMPD_DEBOUNCE", "cannot parse the value")

    r = make(tmp_path, holder, backend, reconfigure=bad)
    await r.start()
    with pytest.raises(InputError):
        await Operations(r).reload()
    assert len(backend.applied) == 1 and r.store.current.state == ImageState.LOADED
    assert r._operation == "" and not r._lock.locked()
    await r.stop()


async def test_failed_load_that_left_the_image_loaded_is_not_restored(tmp_path: Path) -> None:
    import errno

    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend, retry_interval=3600, busy_retries=1)
    await r.start()
    backend.faults = [errno.EBUSY, errno.EBUSY]  # the kernel refused before freeing it
    holder.add_blocks(1)
    r.event(EV)
    await r.settle()
    s = r.store.current
    assert backend.restored == 0 and backend.loaded
    assert s.state == ImageState.DEGRADED and "EBUSY" in s.last_error
    await r.stop()


@pytest.mark.parametrize("closes", ["before start", "during start"])
async def test_events_before_start_are_applied_after_the_first_load(
    tmp_path: Path, closes: str
) -> None:
    """The burst of an event seen before start() must run after start's load: the
    topology moves only after start() returned, so only that burst's pass can see it."""
    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend, quiet=0.01, max_staleness=0.05)
    orig = backend.apply

    async def slow_first(req):  # type: ignore[no-untyped-def]
        if not backend.applied:
            await asyncio.sleep(0.03)  # the burst's timer fires during start()'s load
        return await orig(req)

    backend.apply = slow_first  # type: ignore[method-assign]
    r.event(EV)  # the event source starts first
    if closes == "before start":
        await asyncio.sleep(0.02)
        assert r.debouncer.pending == 0
    await r.start()
    assert len(backend.applied) == 1
    holder.add_blocks(1)  # before the worker ever ran
    await r.settle()
    assert r.store.current.events_received == 1
    assert backend.applied_ends[-1] == holder.ram_end, "the early burst was never run"
    assert not r.store.current.stale and len(backend.applied) == 2
    await r.stop()


async def test_restart_after_an_input_change_reloads_instead_of_adopting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from kdumpd.daemon.backends.base import ApplyResult

    caplog.set_level(logging.INFO, logger="kdumpd")
    holder, backend = TopologyHolder(), RecordingBackend()
    orig = backend.apply

    async def in_place(req):  # type: ignore[no-untyped-def]
        res = await orig(req)
        return ApplyResult(res.loaded, res.gap_usec, True, res.detail)

    backend.apply = in_place  # type: ignore[method-assign]
    r = make(tmp_path, holder, backend)
    await r.start()
    usec = r.store.current.last_update_usec
    assert r.store.current.kernel_hotplug_support and usec > 0
    await r.stop()
    # same inputs: adopted, and the published state survives the restart
    r2 = make(tmp_path, holder, backend)
    await r2.start()
    s = r2.store.current
    assert len(backend.applied) == 1 and backend.adopted == 1
    assert s.kernel_hotplug_support and s.last_update_usec == usec
    await r2.stop()
    # a new cmdline configured while the daemon was down: load afresh, say why
    backend.inputs = {"kernel": "k1", "cmdline": "c2"}
    r3 = make(tmp_path, holder, backend)
    await r3.start()
    assert len(backend.applied) == 2 and r3.store.current.last_trigger == "start"
    assert any("the cmdline changed since generation 1" in m for m in caplog.messages)
    await r3.stop()


async def test_unreadable_topology_does_not_block_a_backend_that_ignores_it(
    tmp_path: Path,
) -> None:
    from kdumpd.core.errors import InputError

    holder = TopologyHolder()
    backend = RecordingBackend("file", consumes_image=False, load_syscall="kexec_file_load")
    hidden = True

    def reader(sysroot: Path):  # type: ignore[no-untyped-def]
        if hidden:  # non-root /proc/iomem, or a kernel that zeroes it
            raise InputError("/proc/iomem", "every address reads 0")
        return holder(sysroot)

    r = make(tmp_path, holder, backend, read_topology=reader, retry_interval=0.001)
    await r.start()
    s = r.store.current
    assert len(backend.applied) == 1 and backend.applied[0].topology is None
    assert s.state == ImageState.LOADED and s.stale and "every address reads 0" in s.last_error
    await asyncio.sleep(0.02)  # no timer retries the read (each would be a reload)
    assert len(backend.applied) == 1
    r.event(EV)  # a burst: something changed that we cannot see, load again
    await r.settle()
    assert len(backend.applied) == 2 and r.store.current.generation == 2
    await r.stop()
    # a restart adopts the image without reloading it
    r2 = make(tmp_path, holder, backend, read_topology=reader)
    await r2.start()
    assert len(backend.applied) == 2 and r2.store.current.state == ImageState.LOADED
    hidden = False  # readable again: the next burst builds the model and loads
    r2.event(EV)
    await r2.settle()
    s = r2.store.current
    assert len(backend.applied) == 3 and not s.stale and s.last_error == ""
    await r2.stop()


async def test_failed_reload_and_load_raise_after_recording_the_state(tmp_path: Path) -> None:
    import errno
    import json

    from kdumpd.core.errors import KdumpdError

    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend, retry_interval=3600)
    await r.start()
    backend.faults = [errno.EINVAL]
    backend.restore_faults = [errno.ENOMEM]
    with pytest.raises(KdumpdError, match="EINVAL"):
        await Operations(r).reload()
    assert r.store.current.state == ImageState.FAILED
    recorded = json.loads((tmp_path / "state/state.json").read_text())
    assert recorded["loaded"] is False
    assert r.retry.scheduled
    backend.faults = [errno.ENOEXEC]
    with pytest.raises(KdumpdError, match="ENOEXEC"):
        await Operations(r).load()
    await Operations(r).reload()  # and a good one says nothing
    assert r.store.current.state == ImageState.LOADED
    await r.stop()


async def test_failed_reload_rolls_the_configuration_back(tmp_path: Path) -> None:
    from kdumpd.core.errors import KdumpdError

    holder, old = TopologyHolder(), RecordingBackend("old")
    r = make(tmp_path, holder, old, retry_interval=3600)
    new = RecordingBackend("new")
    new.loaded = True  # the old image stays loaded: the new one is refused before a syscall
    rolled: list[str] = []

    async def refuse(_req):  # type: ignore[no-untyped-def]
        raise KdumpdError("/boot/vmlinuz-missing: No such file or directory")

    new.apply = refuse  # type: ignore[method-assign]

    def reconfigure():  # type: ignore[no-untyped-def]
        r.backend = new

        def rollback() -> None:
            rolled.append("rollback")
            r.backend = old

        return rollback

    r.reconfigure = reconfigure
    await r.start()
    with pytest.raises(KdumpdError, match="vmlinuz-missing"):
        await Operations(r).reload()
    assert rolled == ["rollback"] and r.backend is old
    s = r.store.current
    assert s.backend == "old" and s.state == ImageState.DEGRADED
    # the retry loads with the old configuration
    r.retry.cancel()
    r.request("retry")
    await r.settle()
    assert r.store.current.state == ImageState.LOADED and len(old.applied) == 2
    await r.stop()


async def test_unload_survives_a_restart_in_the_same_boot(tmp_path: Path) -> None:
    import json

    (tmp_path / "proc/sys/kernel/random").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/random/boot_id").write_text("boot-1\n")
    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend)
    await r.start()
    seen: list[bool] = []
    # whoever sees "unloaded" (and restarts us) must find it recorded already
    r.store.subscribe(
        lambda s, _c: seen.append(
            json.loads((tmp_path / "state/state.json").read_text())["unloaded_on_request"]
        )
    )
    await Operations(r).unload()
    assert seen and all(seen)
    await r.stop()
    r2 = make(tmp_path, holder, backend)
    await r2.start()
    assert r2.store.current.state == ImageState.UNLOADED and len(backend.applied) == 1
    holder.add_blocks(1)
    r2.event(EV)
    await r2.settle()
    assert len(backend.applied) == 1
    await r2.stop()
    # a new boot: load
    (tmp_path / "proc/sys/kernel/random/boot_id").write_text("boot-2\n")
    r3 = make(tmp_path, holder, backend)
    await r3.start()
    assert r3.store.current.state == ImageState.LOADED and len(backend.applied) == 2
    await r3.stop()


async def test_unexpected_error_degrades_and_retries(tmp_path: Path) -> None:
    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend, retry_interval=3600)
    await r.start()
    orig = backend.apply

    async def enospc(_req):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    backend.apply = enospc  # type: ignore[method-assign]
    holder.add_blocks()
    r.event(EV)
    await r.settle()
    s = r.store.current
    assert s.state == ImageState.DEGRADED and "No space left" in s.last_error and s.stale
    assert r.retry.scheduled and r.applied_digest is None
    backend.apply = orig  # type: ignore[method-assign]
    r.retry.cancel()
    r.request("retry")
    await r.settle()
    assert r.store.current.state == ImageState.LOADED
    assert backend.applied_ends[-1] == holder.ram_end
    await r.stop()


async def test_unexpected_error_at_start_keeps_the_daemon_running(tmp_path: Path) -> None:
    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend, retry_interval=3600)
    orig = backend.apply

    async def enospc(_req):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    backend.apply = enospc  # type: ignore[method-assign]
    await r.start()  # must not raise
    s = r.store.current
    assert s.state == ImageState.FAILED and "No space left" in s.last_error
    assert r._worker is not None and r.retry.scheduled
    backend.apply = orig  # type: ignore[method-assign]
    r.retry.cancel()
    r.request("retry")
    await r.settle()
    assert r.store.current.state == ImageState.LOADED
    await r.stop()


async def test_change_without_uevent_is_reapplied_at_most_once(tmp_path: Path) -> None:
    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend)
    await r.start()
    n0 = len(backend.applied)
    backend.on_apply = lambda _req: holder.add_blocks(1)  # moves during every load
    holder.add_blocks(1)
    r.event(EV)
    await r.settle(flush=True)
    assert len(backend.applied) - n0 == 2  # the burst's load + one recheck, not 8
    await r.stop()


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(storm=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 50)), min_size=1, max_size=12))
def test_storm_during_loads_costs_at_most_two_loads_per_burst(
    tmp_path: Path, storm: list[tuple[int, int]]
) -> None:
    """The topology keeps changing (with uevents) while each load runs: every burst
    costs at most two loads, and the last image matches the last topology."""

    async def scenario() -> None:
        holder, backend = TopologyHolder(), RecordingBackend()
        r = Reconciler(
            StateStore(),
            backend,
            sysroot=tmp_path,
            state_dir=tmp_path / f"s{id(storm)}",
            read_topology=holder,
            quiet=0.002,
            max_staleness=0.01,
            sleep=no_sleep,
        )
        await r.start()
        bursts = 0
        on_burst = r._async_debouncer.on_burst

        def count(b):  # type: ignore[no-untyped-def]
            nonlocal bursts
            bursts += 1
            on_burst(b)

        r._async_debouncer.on_burst = count
        todo = list(storm)

        def during_load(_req: object) -> None:
            if todo:
                blocks, events = todo.pop(0)
                holder.add_blocks(blocks)
                for _ in range(events):
                    r.event(EV)

        backend.on_apply = during_load
        holder.add_blocks(1)
        r.event(EV)
        await r.settle()
        loads = len(backend.applied) - 1
        assert bursts >= 1 and loads <= 2 * bursts
        assert backend.applied_ends[-1] == holder.ram_end
        assert not r.store.current.stale
        await r.stop()

    asyncio.run(scenario())


async def test_transient_read_error_is_cleared_by_the_next_good_read(tmp_path: Path) -> None:
    from kdumpd.core.errors import InputError

    holder, backend = TopologyHolder(), RecordingBackend()
    fail = False

    def reader(sysroot: Path):  # type: ignore[no-untyped-def]
        if fail:
            raise InputError("/proc/iomem", "truncated read", 7)
        return holder(sysroot)

    r = make(tmp_path, holder, backend, read_topology=reader, retry_interval=3600)
    await r.start()
    fail = True
    await Operations(r).rescan()
    assert "truncated read" in r.store.current.last_error and r.store.current.stale
    fail = False
    await Operations(r).rescan()  # same topology as the loaded image: nothing to load, error gone
    s = r.store.current
    assert s.last_error == "" and not s.stale and len(backend.applied) == 1
    await r.stop()


async def test_read_failure_on_the_recheck_pass_loads_nothing_blind(tmp_path: Path) -> None:
    from kdumpd.core.errors import InputError

    holder = TopologyHolder()
    backend = RecordingBackend("file", consumes_image=False, load_syscall="kexec_file_load")
    reads = 0
    fail_at = -1

    def reader(sysroot: Path):  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        if reads == fail_at:
            raise InputError("/proc/iomem", "read while the kernel rewrote it", 1)
        return holder(sysroot)

    r = make(tmp_path, holder, backend, read_topology=reader, retry_interval=3600)
    await r.start()
    n = len(backend.applied)
    fail_at = reads + 2  # the burst's read works, the recheck's read fails
    holder.add_blocks(1)
    r.event(EV)
    await r.settle()
    assert len(backend.applied) == n + 1, "a blind load on the recheck pass"
    assert r.store.current.stale and r.store.current.state == ImageState.LOADED
    await r.stop()


async def test_a_rescan_mid_storm_does_not_say_current(tmp_path: Path) -> None:
    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend, quiet=60, max_staleness=60)
    await r.start()
    r.store.update(stale=False)
    r.event(EV)  # pending in the debouncer, not applied yet
    await Operations(r).rescan()
    assert r.store.current.stale, "stale cleared while events are pending"
    await r.stop()


async def test_a_failed_load_does_not_use_up_a_generation(tmp_path: Path) -> None:
    import errno
    import json

    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend, retry_interval=3600)
    await r.start()
    backend.faults = [errno.EINVAL]
    holder.add_blocks(1)
    r.event(EV)
    await r.settle()
    assert r.store.current.state == ImageState.DEGRADED  # restored the last good image
    assert json.loads((tmp_path / "state/state.json").read_text())["generation"] == 1
    r.retry.cancel()
    r.request("retry")
    await r.settle()
    assert r.store.current.generation == 2 and [q.generation for q in backend.applied] == [1, 2]
    await r.stop()


async def test_last_update_duration_counts_from_the_bursts_first_event(tmp_path: Path) -> None:
    holder, backend = TopologyHolder(), RecordingBackend()
    r = make(tmp_path, holder, backend, quiet=0.04, max_staleness=1.0)
    await r.start()
    holder.add_blocks(1)
    r.event(EV)
    await r.settle()  # the quiet period (40 ms) runs out before the pass starts
    assert r.store.current.last_update_duration_usec >= 40_000
    await Operations(r).reload()  # no burst: the pass alone, well below the quiet period
    assert r.store.current.last_update_duration_usec < 40_000
    await r.stop()
