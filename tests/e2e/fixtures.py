"""Capture real sysroot fixtures from Debian guests, before and after hot-adding
2 CPUs and a DIMM:  python -m tests.e2e.fixtures [--arch ppc64le] [6.1 6.12]

Writes tests/fixtures/guest-<kernel>-{before,after}/ (x86_64) or
tests/fixtures/guest-ppc64le-<kernel>-{before,after}/ with
tests/fixtures/capture_sysroot.sh run inside the guest (busybox sh).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.e2e import hotplug, initramfs, kernels, pyroot
from tests.e2e.guest import Guest, cpu_hotplug_mode

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "fixtures" / "capture_sysroot.sh"


def capture(key: str, build: Path, arch: str = "x86_64") -> None:
    kern = kernels.fetch(key, arch)
    if arch == "ppc64le":
        root = pyroot.build()
        g = Guest(
            kern,
            initramfs.build(kern, pyroot=root),
            build / f"fixtures-{arch}-{key}",
            mem="2G",
            maxmem="8G",
            crashkernel="512M",
            pyroot=root,
        )
        script = f"/host{g.guest_path(SCRIPT)}"
        name = f"guest-ppc64le-{key}"
    else:
        g = Guest(
            kern,
            initramfs.build(kern),
            build / f"fixtures-{key}",
            cpu_hotplug=cpu_hotplug_mode(key),
        )
        script = f"/host{SCRIPT}"
        name = f"guest-{key}"
    try:
        g.start()
        g.check(f"sh {script} /out/before")
        hotplug.add_cpu(g, "cpu-a")
        hotplug.add_cpu(g, "cpu-b")
        hotplug.add_dimm(g, "dimm-a", 512 << 20)
        g.check(f"sh {script} /out/after")
    finally:
        g.stop()
    for phase in ("before", "after"):
        dest = REPO / "tests" / "fixtures" / f"{name}-{phase}"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(g.outdir / phase, dest)
        print(f"wrote {dest}")


if __name__ == "__main__":
    build = REPO / "build" / "e2e"
    args = sys.argv[1:]
    arch = "x86_64"
    if args[:1] == ["--arch"]:
        arch, args = args[1], args[2:]
    for k in args or ["6.1", "6.12"]:
        capture(k, build, arch)
