"""The metrics file: parsed with prometheus_client's own text-format parser and checked
against the daemon's state; the rate bound, the trailing write, atomic replacement and
failures that are one log line."""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from kdumpd.config import load_settings
from kdumpd.daemon.reconciler import Reconciler
from kdumpd.daemon.state import DaemonState, ImageState, StateStore
from kdumpd.events.event import HotplugEvent
from kdumpd.interfaces.metrics import (
    MetricsWriter,
    NoImageClock,
    metric_families,
    write_textfile,
)
from kdumpd.system.kexecsysfs import read_load_limit_panic
from tests.unit.daemon_fakes import RecordingBackend, TopologyHolder, no_sleep

EV = HotplugEvent("online", "memory", "/devices/system/memory/memory512")


def parse(path: Path) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> {sorted labels: value}, by prometheus_client's parser."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[labels] = sample.value
    return out


def value(metrics: dict[str, dict[Any, float]], name: str, **labels: str) -> float:
    return metrics[name][tuple(sorted(labels.items()))]


def sysroot(tmp_path: Path, *, crash_loaded: str | None = "1", limit: str | None = None) -> Path:
    root = tmp_path / "root"
    (root / "sys/kernel").mkdir(parents=True, exist_ok=True)
    (root / "proc/sys/kernel").mkdir(parents=True, exist_ok=True)
    if crash_loaded is not None:
        (root / "sys/kernel/kexec_crash_loaded").write_text(crash_loaded + "\n")
    if limit is not None:
        (root / "proc/sys/kernel/kexec_load_limit_panic").write_text(limit + "\n")
    return root


STATE = DaemonState(
    state=ImageState.DEGRADED,
    backend="kernel",
    generation=7,
    last_update_usec=1_764_460_800_123_456,
    last_update_duration_usec=250_000,
    last_load_gap_usec=1_500,
    load_gaps_usec=4_500,
    events_received=3840,
    events_coalesced=3835,
    regenerations=9,
    loads=5,
    load_failures=2,
    pending_events=3,
    stale=True,
    stale_reason="the kernel skipped an in-place update",
    elfcorehdr_used=4096,
    elfcorehdr_capacity=65536,
    crash_kernel_size=256 << 20,
    kernel_hotplug_support=True,
)


async def test_every_metric_follows_the_state(tmp_path: Path) -> None:
    root = sysroot(tmp_path, crash_loaded="1", limit="3")
    store = StateStore(STATE)
    path = tmp_path / "kdumpd.prom"
    w = MetricsWriter(path, store, root)
    w.start()
    w.stop()
    m = parse(path)
    assert value(m, "kdumpd_crash_image_loaded") == 1
    assert value(m, "kdumpd_state", state="degraded") == 1
    assert sum(m["kdumpd_state"].values()) == 1 and len(m["kdumpd_state"]) == len(ImageState)
    assert value(m, "kdumpd_stale", reason="the kernel skipped an in-place update") == 1
    assert value(m, "kdumpd_generation") == 7
    assert value(m, "kdumpd_loads_total") == 5
    assert value(m, "kdumpd_load_failures_total") == 2
    assert value(m, "kdumpd_events_total") == 3840
    assert value(m, "kdumpd_events_coalesced_total") == 3835
    assert value(m, "kdumpd_regenerations_total") == 9
    assert value(m, "kdumpd_pending_events") == 3
    assert value(m, "kdumpd_last_update_timestamp_seconds") == pytest.approx(1_764_460_800.123456)
    assert value(m, "kdumpd_last_update_duration_seconds") == pytest.approx(0.25)
    assert value(m, "kdumpd_last_load_gap_seconds") == pytest.approx(0.0015)
    assert value(m, "kdumpd_load_gap_seconds_total") == pytest.approx(0.0045)
    # degraded holds an image: only the load gaps count as time without one
    assert value(m, "kdumpd_no_crash_image_seconds_total") == pytest.approx(0.0045)
    assert value(m, "kdumpd_kernel_hotplug_support") == 1
    assert value(m, "kdumpd_elfcorehdr_used_bytes") == 4096
    assert value(m, "kdumpd_elfcorehdr_capacity_bytes") == 65536
    assert value(m, "kdumpd_crash_kernel_size_bytes") == 256 << 20
    assert value(m, "kdumpd_backend_info", backend="kernel") == 1
    assert value(m, "kdumpd_kexec_load_limit_panic") == 3
    # the families carry HELP and TYPE as the format wants them
    text = path.read_text()
    assert "# TYPE kdumpd_loads_total counter" in text
    assert "# TYPE kdumpd_backend_info gauge" in text  # an info metric in format 0.0.4
    assert "# HELP kdumpd_crash_image_loaded" in text


async def test_the_kernels_word_and_an_absent_limit(tmp_path: Path) -> None:
    """kexec_crash_loaded is read from the kernel (here 0 although the state says
    loaded); a kernel without kexec_load_limit_panic (6.1) has no such metric, and the
    stale label is empty when nothing is stale."""
    root = sysroot(tmp_path, crash_loaded="0", limit=None)
    store = StateStore(DaemonState(state=ImageState.LOADED, backend="dry-run"))
    path = tmp_path / "kdumpd.prom"
    w = MetricsWriter(path, store, root)
    w.start()
    w.stop()
    m = parse(path)
    assert value(m, "kdumpd_crash_image_loaded") == 0
    assert "kdumpd_kexec_load_limit_panic" not in m
    assert value(m, "kdumpd_stale", reason="") == 0
    assert value(m, "kdumpd_backend_info", backend="dry-run") == 1


def test_load_limit_panic_reader(tmp_path: Path) -> None:
    assert read_load_limit_panic(sysroot(tmp_path / "a", limit="-1")) == -1
    assert read_load_limit_panic(sysroot(tmp_path / "b", limit="0")) == 0
    assert read_load_limit_panic(sysroot(tmp_path / "c", limit=None)) is None
    assert read_load_limit_panic(sysroot(tmp_path / "d", limit="x")) is None


def test_stale_without_a_reason_is_the_topology() -> None:
    fams = metric_families(
        DaemonState(stale=True), crash_loaded=False, load_limit_panic=None, no_image_state_seconds=0
    )
    stale = next(f for f in fams if f.name == "kdumpd_stale")
    assert [(s.labels, s.value) for s in stale.samples] == [({"reason": "topology"}, 1)]


def test_no_image_clock_counts_loading_failed_and_unloaded() -> None:
    now = [100.0]
    c = NoImageClock(lambda: now[0])
    c.observe(ImageState.LOADING)
    now[0] = 101.0
    c.observe(ImageState.LOADED)
    now[0] = 105.0
    c.observe(ImageState.UPDATING)
    c.observe(ImageState.DEGRADED)
    now[0] = 106.0
    c.observe(ImageState.FAILED)
    now[0] = 108.5
    assert c.missing and c.seconds() == pytest.approx(3.5)
    c.observe(ImageState.UNLOADED)  # still without one: one span
    now[0] = 109.0
    c.observe(ImageState.LOADED)
    now[0] = 200.0
    assert not c.missing and c.seconds() == pytest.approx(4.0)


async def test_a_storm_is_written_at_most_once_per_interval_and_the_last_state_lands(
    tmp_path: Path,
) -> None:
    root = sysroot(tmp_path)
    store = StateStore(DaemonState(state=ImageState.LOADED))
    path = tmp_path / "kdumpd.prom"
    w = MetricsWriter(path, store, root, min_interval=0.2)
    w.start()
    loop = asyncio.get_running_loop()
    end = loop.time() + 1.0
    n = 0
    while loop.time() < end:
        n += 1
        store.update(events_received=n)
        await asyncio.sleep(0.001)
    updates = n
    assert updates > 100
    # 1 s of changes at 0.2 s apart: the first write, about five more, one trailing
    await asyncio.sleep(0.3)
    times = list(w.write_times)
    assert 5 <= len(times) <= 8, times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.2, gaps
    assert value(parse(path), "kdumpd_events_total") == updates  # the trailing write
    writes = w.writes
    await asyncio.sleep(0.3)
    assert w.writes == writes, "no write without a change while an image is loaded"
    w.stop()


async def test_without_an_image_the_file_is_refreshed(tmp_path: Path) -> None:
    root = sysroot(tmp_path, crash_loaded="0")
    store = StateStore(DaemonState(state=ImageState.FAILED))
    path = tmp_path / "kdumpd.prom"
    w = MetricsWriter(path, store, root, min_interval=0.05, refresh=0.1)
    w.start()
    await asyncio.sleep(0.35)
    assert w.writes >= 3
    first = value(parse(path), "kdumpd_no_crash_image_seconds_total")
    assert first >= 0.2
    store.update(state=ImageState.LOADED)
    await asyncio.sleep(0.1)
    writes = w.writes
    await asyncio.sleep(0.3)
    assert w.writes == writes
    w.stop()


async def test_write_failures_are_one_log_line_and_never_stop_anything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = sysroot(tmp_path)
    store = StateStore(DaemonState(state=ImageState.LOADED))
    path = tmp_path / "missing-dir" / "kdumpd.prom"
    w = MetricsWriter(path, store, root, min_interval=0.01)
    with caplog.at_level(logging.INFO, logger="kdumpd.interfaces.metrics"):
        w.start()
        for i in range(20):
            store.update(generation=i + 1)
            await asyncio.sleep(0.02)
        assert w.failures >= 10
        failed = [r for r in caplog.records if "cannot write the metrics file" in r.message]
        assert len(failed) == 1 and "No such file or directory" in failed[0].message
        path.parent.mkdir()
        store.update(generation=100)
        await asyncio.sleep(0.05)
        w.stop()
    assert any("written again" in r.message for r in caplog.records)
    assert value(parse(path), "kdumpd_generation") == 100
    assert [p.name for p in path.parent.iterdir()] == ["kdumpd.prom"]


async def test_a_failed_write_leaves_the_old_file_whole(tmp_path: Path) -> None:
    """The file is replaced by a rename from a temporary file beside it; when the
    rename fails the old file stays as it was and the temporary one is gone."""
    root = sysroot(tmp_path)
    store = StateStore(DaemonState(state=ImageState.LOADED, generation=1))
    path = tmp_path / "kdumpd.prom"
    seen: list[list[str]] = []

    def write(p: str, registry: CollectorRegistry) -> None:
        real_rename = os.rename

        def rename(src: str, dst: str) -> None:
            seen.append(sorted(os.listdir(tmp_path)))
            assert Path(src).parent == Path(dst).parent == tmp_path  # same directory
            if store.current.generation == 2:
                raise OSError(errno.EIO, "Input/output error")
            real_rename(src, dst)

        os.rename = rename  # type: ignore[assignment]
        try:
            write_textfile(p, registry)
        finally:
            os.rename = real_rename

    w = MetricsWriter(path, store, root, min_interval=0.0, write=write)
    w.start()
    before = path.read_text()
    store.update(generation=2)
    await asyncio.sleep(0.02)
    assert w.failures == 1 and path.read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["kdumpd.prom", "root"]
    assert any(len(s) == 3 for s in seen)  # the temporary file existed beside it
    w.stop()


async def test_reconciler_counts_load_failures_and_gaps(tmp_path: Path) -> None:
    holder, backend = TopologyHolder(), RecordingBackend()
    r = Reconciler(
        StateStore(),
        backend,
        sysroot=tmp_path,
        state_dir=tmp_path / "state",
        read_topology=holder,
        quiet=0.005,
        max_staleness=0.05,
        sleep=no_sleep,
        retry_interval=3600,
    )
    await r.start()
    assert r.store.current.load_gaps_usec == 5 and r.store.current.load_failures == 0
    backend.faults = [errno.EINVAL]  # fails, then the last good image is restored
    holder.add_blocks(1)
    r.event(EV)
    await r.settle()
    s = r.store.current
    assert s.state == ImageState.DEGRADED
    assert s.load_failures == 1 and s.load_gaps_usec == 10 and s.loads == 2
    r.retry.cancel()
    r.request("retry")
    await r.settle()
    assert r.store.current.load_gaps_usec == 15 and r.store.current.load_failures == 1
    await r.stop()


def test_metrics_file_setting(tmp_path: Path) -> None:
    assert load_settings(None, {}, env={}).metrics_file is None
    s = load_settings(None, {"metrics_file": str(tmp_path / "k.prom")}, env={})
    assert s.metrics_file == tmp_path / "k.prom"
    assert load_settings(None, {}, env={"KDUMPD_METRICS_FILE": ""}).metrics_file is None
    cfg = tmp_path / "kdumpd.toml"
    cfg.write_text('metrics_file = "/var/lib/prometheus/node-exporter/kdumpd.prom"\n')
    assert str(load_settings(cfg, {}, env={}).metrics_file).endswith("node-exporter/kdumpd.prom")


async def test_the_file_is_world_readable_under_a_strict_umask(tmp_path: Path) -> None:
    """The unit's UMask=0077 must not hide the file from node_exporter."""
    root = sysroot(tmp_path)
    path = tmp_path / "kdumpd.prom"
    old = os.umask(0o077)
    try:
        w = MetricsWriter(path, StateStore(DaemonState()), root)
        w.start()
        w.stop()
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(os.listdir(tmp_path)) == ["kdumpd.prom", "root"]
