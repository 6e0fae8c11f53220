"""A short run of every fuzz target (``make fuzz`` runs >= 10^5 cases each): each
reader of outside input either accepts a mutated input or raises one of kdumpd's own
one-line errors, within the per-case time limit."""

from __future__ import annotations

import os

import pytest

from tests.fuzz.engine import run_target
from tests.fuzz.targets import all_targets
from tests.integration.dbusbus import dbus_daemon_path

CASES = int(os.environ.get("KDUMPD_FUZZ_SHORT_CASES", "300"))


@pytest.mark.parametrize("name", sorted(all_targets()))
def test_fuzz_target_short_run(name: str) -> None:
    if name == "dbus" and dbus_daemon_path() is None:
        pytest.skip("dbus-daemon not installed (Debian package dbus-daemon)")
    result = run_target(all_targets()[name](), cases=CASES, seed=1, time_limit=5.0)
    assert result.cases == CASES
    report = "\n".join(f"{f.key} x{f.count}\n{f.traceback}" for f in result.findings.values())
    assert result.ok, report
