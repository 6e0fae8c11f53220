"""kernel.kexec_load_limit_panic: read through the sysroot, published as
LoadLimitPanic / in `kdumpd status`, and warned about before bursts use it up."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from kdumpd.commands.status import format_state
from kdumpd.daemon.loadlimit import NO_LIMIT, LoadLimit
from kdumpd.daemon.state import ImageState
from kdumpd.interfaces.dbus import PROPERTY_FIELDS, property_value
from tests.unit.daemon_fakes import FIXTURE, RecordingBackend, TopologyHolder, reconciler

FIXTURE_612 = FIXTURE.parent / "guest-6.12-before"
LIMIT = "proc/sys/kernel/kexec_load_limit_panic"


@pytest.fixture
def sysroot(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(FIXTURE_612, root)
    return root


def set_limit(root: Path, value: str) -> None:
    (root / LIMIT).write_text(value + "\n")


def test_no_sysctl_or_no_limit_is_minus_one(sysroot: Path) -> None:
    limit = LoadLimit(sysroot)
    assert limit.refresh() == NO_LIMIT  # 6.1/6.12 fixture: no such file
    set_limit(sysroot, "-1")
    assert limit.refresh() == NO_LIMIT
    set_limit(sysroot, "garbage")
    assert limit.refresh() == NO_LIMIT


def test_warns_at_ten_percent_then_when_halved_and_for_the_last_ten(
    sysroot: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "kdumpd.daemon.loadlimit")
    limit = LoadLimit(sysroot)
    set_limit(sysroot, "1000")
    assert limit.refresh(backend="segment") == 1000 and not caplog.records
    warned = []
    for left in range(999, -1, -1):
        set_limit(sysroot, str(left))
        caplog.clear()
        limit.refresh(backend="segment")
        if caplog.records:
            warned.append(left)
    # 10 % of 1000 = 100, then 50, 25, 12, then each of the last ten
    assert warned == [100, 50, 25, 12, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]


def test_a_small_limit_warns_at_once_and_names_the_per_burst_cost(
    sysroot: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "kdumpd.daemon.loadlimit")
    set_limit(sysroot, "5")
    LoadLimit(sysroot).refresh(per_burst=True, backend="file")
    (rec,) = caplog.records
    assert "5 crash-image loads left" in rec.getMessage()
    assert "backend file loads once per hotplug burst" in rec.getMessage()
    assert rec.LOAD_LIMIT_PANIC == 5  # type: ignore[attr-defined]


def test_zero_is_an_error(sysroot: Path, caplog: pytest.LogCaptureFixture) -> None:
    set_limit(sysroot, "0")
    LoadLimit(sysroot).refresh()
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert "refuses every further crash-image load" in caplog.text


async def test_the_reconciler_publishes_what_is_left_after_each_load(sysroot: Path) -> None:
    set_limit(sysroot, "40")
    backend = RecordingBackend()
    count = iter(range(39, 0, -1))
    backend.on_apply = lambda _req: set_limit(sysroot, str(next(count)))
    holder = TopologyHolder()
    r = reconciler(sysroot, backend, holder)
    await r.start()
    assert r.store.current.state == ImageState.LOADED
    assert r.store.current.load_limit_panic == 39
    holder.add_blocks(1)
    r.request("burst")
    await r.settle()
    assert r.store.current.load_limit_panic == 38
    await r.stop()


def test_dbus_property_and_status_line() -> None:
    from kdumpd.daemon.state import DaemonState

    assert PROPERTY_FIELDS["LoadLimitPanic"] == "load_limit_panic"
    assert property_value(DaemonState(), "LoadLimitPanic") == -1
    assert property_value(DaemonState(load_limit_panic=7), "LoadLimitPanic") == 7
    text = format_state(DaemonState(load_limit_panic=7).to_json())
    assert "Load limit: 7 crash-image loads left this boot" in text
    assert "Load limit" not in format_state(DaemonState().to_json())
