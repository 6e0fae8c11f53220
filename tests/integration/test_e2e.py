"""`make test`'s share of the end-to-end harness: the ``hotplug-add`` scenario on
Debian's 6.1 and 6.12 kernels in QEMU (TCG) with ``kdumpd run`` in the guest.

Each test boots a guest, starts the daemon, hot-adds 2 CPUs and 2 DIMMs, crashes
the guest and checks the capture kernel's /proc/vmcore: one NT_PRSTATUS per online
CPU and a PT_LOAD over every System RAM range.  The full matrix is ``make e2e``.
Skips (with the reason) only when QEMU cannot run here or the kernel package cannot
be fetched.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import kernels, report, scenarios
from tests.e2e.guest import qemu_available

pytestmark = pytest.mark.qemu

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_hotplug_add_vmcore_complete(kernel: str) -> None:
    why = qemu_available()
    if why:
        pytest.skip(f"QEMU cannot run here: {why}")
    try:
        kernels.fetch(kernel)
    except (kernels.KernelUnavailable, OSError) as err:
        pytest.skip(f"kernel {kernel} cannot be downloaded: {err}")
    res = scenarios.run(kernel, "hotplug-add", REPO / "build" / "e2e" / "pytest")
    print(report.table([res]))
    assert not res.error, res.error
    assert res.backend.startswith("kdumpd/"), res.backend
    assert len(res.cpus_online) == 3, res.cpus_online
    assert len(res.prstatus_cpus) == len(res.cpus_online), (res.prstatus_cpus, res.cpus_online)
    assert res.missing_ranges == [], res.missing_ranges
    assert res.complete
    assert res.events is not None and res.events >= 1
    assert res.loads is not None and res.loads >= 1
