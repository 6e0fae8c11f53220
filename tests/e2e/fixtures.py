"""Capture real sysroot fixtures from Debian guests, before and after hot-adding
2 CPUs and a DIMM:  python -m tests.e2e.fixtures [6.1 6.12]

Writes tests/fixtures/guest-<kernel>-{before,after}/ with
tests/fixtures/capture_sysroot.sh run inside the guest (busybox sh).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.e2e import hotplug, initramfs, kernels
from tests.e2e.guest import Guest, cpu_hotplug_mode

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "fixtures" / "capture_sysroot.sh"


def capture(key: str, build: Path) -> None:
    kern = kernels.fetch(key)
    g = Guest(
        kern, initramfs.build(kern), build / f"fixtures-{key}", cpu_hotplug=cpu_hotplug_mode(key)
    )
    try:
        g.start()
        g.check(f"sh /host{SCRIPT} /out/before")
        hotplug.add_cpu(g, "cpu-a")
        hotplug.add_cpu(g, "cpu-b")
        hotplug.add_dimm(g, "dimm-a", 512 << 20)
        g.check(f"sh /host{SCRIPT} /out/after")
    finally:
        g.stop()
    for phase in ("before", "after"):
        dest = REPO / "tests" / "fixtures" / f"guest-{key}-{phase}"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(g.outdir / phase, dest)
        print(f"wrote {dest}")


if __name__ == "__main__":
    build = REPO / "build" / "e2e"
    for k in sys.argv[1:] or ["6.1", "6.12"]:
        capture(k, build)
