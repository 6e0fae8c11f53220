"""`make test`'s share of the end-to-end harness: the ``hotplug-add`` scenario on
Debian's 6.1 kernel with the ``file`` and the ``segment`` back-ends and on 6.12 with
the probed one (``kernel``), in QEMU (TCG) with ``kdumpd run`` in the guest.

Each test boots a guest, starts the daemon, hot-adds 2 CPUs and 2 DIMMs, crashes
the guest and checks the capture kernel's /proc/vmcore: one NT_PRSTATUS per online
CPU and a PT_LOAD over every System RAM range; and the ppc64le ``hotplug-add`` rows on
6.1 and 6.12 (a crash on a hot-added CPU; on 6.12 the kernel's in-place update), and
ppc64le 6.12 ``late-start-stale`` (the stale reason names exactly what the dump lacks).
The full matrix is ``make e2e`` (and ``make e2e ARCH=ppc64le``).
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


@pytest.mark.parametrize(
    ("kernel", "backend"), [("6.1", "file"), ("6.1", "segment"), ("6.12", "auto")]
)
def test_hotplug_add_vmcore_complete(kernel: str, backend: str) -> None:
    why = qemu_available()
    if why:
        pytest.skip(f"QEMU cannot run here: {why}")
    try:
        kernels.fetch(kernel)
    except (kernels.KernelUnavailable, OSError) as err:
        pytest.skip(f"kernel {kernel} cannot be downloaded: {err}")
    res = scenarios.run(kernel, "hotplug-add", REPO / "build" / "e2e" / "pytest", backend=backend)
    print(report.table([res]))
    assert not res.error, res.error
    assert res.backend.startswith("kdumpd/"), res.backend
    assert len(res.cpus_online) == 3, res.cpus_online
    assert len(res.prstatus_cpus) == len(res.cpus_online), (res.prstatus_cpus, res.cpus_online)
    assert res.missing_ranges == [], res.missing_ranges
    assert res.complete
    assert res.events is not None and res.events >= 1
    assert res.loads is not None and res.loads >= 1
    if backend == "segment":
        # kdumpd's own image reached the kernel: booted through its purgatory, and the
        # capture kernel read the elfcorehdr kdumpd placed (not one the kernel built)
        assert res.backend == "kdumpd/segment", res.backend
        assert res.elfcorehdr_ours and res.purgatory_entered, res.detail
    elif backend == "file":
        assert res.backend == "kdumpd/file" and res.elfcorehdr_ours is False
    if kernel == "6.12":  # kexec_file_load image: the kernel updated it, one load in all
        assert res.detail["crash_hotplug"] == "1", res.detail["crash_hotplug"]
        assert res.detail["in_place_missing"] == [], res.detail["in_place_missing"]


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_ppc64le_crash_on_a_hot_added_cpu_leaves_a_complete_dump(kernel: str) -> None:
    """ppc64le (QEMU pseries, Debian's ppc64el kernels: no kexec_file_load, kdumpd loads
    with kexec-tools): hot-add 2 CPUs and 2 DIMMs, panic **on the last hot-added CPU**.
    With a stale crash FDT the capture kernel does not boot at all (the ``baseline`` row
    of ``make e2e ARCH=ppc64le``); with kdumpd there is a dump with every RAM range, and
    the CPU nodes of kdumpd's own crash FDT equal those the capture kernel booted with.
    On 6.1 kdumpd reloads once per burst; on 6.12 it loads once with ``--hotplug`` and
    the kernel updates the crash FDT and the elfcorehdr in place (no second load)."""
    why = qemu_available("ppc64le")
    if why:
        pytest.skip(f"QEMU cannot run ppc64le guests here: {why}")
    try:
        kernels.fetch(kernel, "ppc64le")
    except (kernels.KernelUnavailable, OSError) as err:
        pytest.skip(f"ppc64el kernel {kernel} cannot be downloaded: {err}")
    res = scenarios.run(kernel, "hotplug-add", REPO / "build" / "e2e" / "pytest", "ppc64le")
    print(report.table([res]))
    assert not res.error, res.error
    assert res.arch == "ppc64le"
    assert res.backend == "kdumpd/kexec-tools", res.backend
    assert res.crash_cpu is not None and res.crash_cpu != 0
    assert res.dump, "the capture kernel did not boot after the crash on the hot-added CPU"
    assert len(res.cpus_online) == 3, res.cpus_online
    assert res.missing_ranges == [], res.missing_ranges
    assert len(res.prstatus_cpus) == len(res.cpus_online), (res.prstatus_cpus, res.cpus_online)
    assert res.complete
    cmp = res.detail["fdt_compare"]
    assert cmp["equal"], cmp
    assert len(res.capture_dt_cpus) == 3, res.capture_dt_cpus
    if kernel == "6.12":
        assert res.detail["crash_hotplug"] == "1", res.detail["crash_hotplug"]
        assert res.loads == 1, res.loads
        assert res.detail["in_place_missing"] == [], res.detail["in_place_missing"]
        assert res.passed


def test_ppc64le_a_stale_reason_names_exactly_what_the_dump_lacks() -> None:
    """ppc64le 6.12: 2 DIMMs hot-added before the daemon starts.  kexec-tools' elfcorehdr
    stops at /chosen/linux,memory-limit (the end of boot memory), so the start's load
    lacks them; the daemon must say ``stale`` and name that RAM, and a crash then must
    give a dump lacking exactly it (the state claims no more than is loaded)."""
    why = qemu_available("ppc64le")
    if why:
        pytest.skip(f"QEMU cannot run ppc64le guests here: {why}")
    try:
        kernels.fetch("6.12", "ppc64le")
    except (kernels.KernelUnavailable, OSError) as err:
        pytest.skip(f"ppc64el kernel 6.12 cannot be downloaded: {err}")
    res = scenarios.run("6.12", "late-start-stale", REPO / "build" / "e2e" / "pytest", "ppc64le")
    print(report.table([res]))
    assert not res.error, res.error
    assert res.backend == "kdumpd/kexec-tools", res.backend
    at_start = res.detail["stale_at_start"]
    assert at_start["stale"] and "linux,memory-limit" in at_start["stale_reason"], at_start
    assert res.missing_mb == 512, res.missing_ranges
    assert res.detail["stale_reason_vs_dump"] == [], res.detail["stale_reason_vs_dump"]
    assert res.passed
