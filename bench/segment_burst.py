#!/usr/bin/env python3
"""Benchmark: what one hotplug burst costs the ``segment`` back-end in user space.

Run from the repository root: ``.venv/bin/python bench/segment_burst.py [--runs N]``
(or ``make bench``).  Needs the built purgatory (``make purgatory``).

For each initrd size (16 MiB and 256 MiB, in the same run) and each header size (a
small machine, and 8,192 CPUs + 8,192 memory ranges), the back-end prepares its
segments once, then every burst does what the daemon does between two ``kexec_load``
calls: rewrite the elfcorehdr in place (``CrashImage.regenerate``), rehash that one
region into the purgatory header (``SegmentImage.refresh``) and re-check the input
files' identity ("burst ms"; the ratio 256 MiB / 16 MiB must stay near 1: the cost
follows the header, not the image); then it hands the same segment list to the
syscall wrapper, whose ``syscall`` is a no-op here ("load args ms": the buffer
protocol and the mlock/munlock that fault every page in before the syscall, so the
kernel's copy meets no page fault while no crash image is loaded; this part follows
the image size by design).  "prepare ms" is once per input set: map the files, build
boot_params, hash kernel and initrd.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from elfcorehdr import x86_topology

from kdumpd.arch.x86_64 import X86_64
from kdumpd.core.image import CrashImage
from kdumpd.core.topology import Resource, Topology
from kdumpd.daemon.backends.file import KexecFiles
from kdumpd.daemon.backends.segment import SegmentBackend
from kdumpd.system import kexec

MiB = 1 << 20
BLOCK = 128 << 20
CRASH = (0x40000000, 0x7FFFFFFF)  # 1 GiB reservation: room for a 256 MiB initrd


def topology(ncpus: int, nranges: int) -> Topology:
    iomem: list[Resource] = [
        Resource(0x0, 0xFFF, "Reserved", 0),
        Resource(0x1000, 0x9FBFF, "System RAM", 0),
        Resource(0x100000, 0xBFFDFFFF, "System RAM", 0),
        Resource(0x1000000, 0x1FFFFFF, "Kernel code", 1),
        Resource(CRASH[0], CRASH[1], "Crash kernel", 1),
    ]
    for i in range(nranges):
        start = 0x100000000 + 2 * i * BLOCK
        iomem.append(Resource(start, start + BLOCK - 1, "System RAM", 0))
    return x86_topology(iomem, ncpus)


def kernel_file(tmp: Path) -> Path:
    cached = sorted(Path.home().glob(".cache/kdumpd/e2e/kernels/*6.1*/boot/vmlinuz-*"))
    if cached:
        return cached[0]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))
    from bzimage_support import make_bzimage  # type: ignore[import-not-found]

    path = tmp / "vmlinuz"
    path.write_bytes(make_bzimage(init_size=64 * MiB, payload=8 * MiB))
    return path


def initrd_file(tmp: Path, mb: int) -> Path:
    path = tmp / f"initrd-{mb}M"
    with open(path, "wb") as f:
        chunk = os.urandom(MiB)
        for _ in range(mb):
            f.write(chunk)
    return path


class NoSyscall:
    def __call__(self, *args: Any) -> int:
        return 0


def bench(kernel: Path, initrd: Path, ncpus: int, nranges: int, runs: int) -> dict[str, float]:
    arch = X86_64()
    big = topology(ncpus, nranges)
    small = dataclasses.replace(big, present_cpus=big.present_cpus[:-1])
    cap = arch.elfcorehdr_capacity(big, max_cpus=ncpus, max_ranges=nranges + 8)
    image = CrashImage.for_topology(arch, big, cap)
    sys_ = kexec.LinuxKexec("x86_64")
    sys_._syscall = NoSyscall()  # type: ignore[assignment]  # nothing reaches the kernel
    backend = SegmentBackend(sys_, KexecFiles(str(kernel), str(initrd), "console=ttyS0"), "/")
    t0 = time.perf_counter()
    backend.prepare(image, big)
    prepare_ms = (time.perf_counter() - t0) * 1000
    times, loads = [], []
    for i in range(runs + 1):
        t = small if i % 2 else big
        t0 = time.perf_counter()
        image.regenerate(t)
        seg = backend.prepare(image, t)  # the identity check; same object
        seg.refresh()
        t1 = time.perf_counter()
        backend._load_sync(seg)
        t2 = time.perf_counter()
        times.append((t1 - t0) * 1000)
        loads.append((t2 - t1) * 1000)
    return {
        "prepare_ms": prepare_ms,
        "burst_ms": statistics.median(times[1:]),
        "load_args_ms": statistics.median(loads[1:]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=21)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        kernel = kernel_file(tmp)
        rows = []
        for ncpus, nranges in ((16, 8), (8192, 8192)):
            per = {}
            for mb in (16, 256):
                initrd = initrd_file(tmp, mb)
                per[mb] = bench(kernel, initrd, ncpus, nranges, args.runs)
                initrd.unlink()
            rows.append((ncpus, nranges, per))
    print(
        f"kernel {kernel.name}; burst = regenerate + identity check + rehash one region; "
        "load args = buffer protocol + mlock/munlock of every segment (before the syscall)"
    )
    print(
        f"{'header':<22}{'initrd':>8}{'prepare ms':>12}{'burst ms':>10}{'ratio':>7}"
        f"{'load args ms':>14}"
    )
    for ncpus, nranges, per in rows:
        for mb in (16, 256):
            r = per[mb]
            ratio = per[256]["burst_ms"] / per[16]["burst_ms"] if mb == 256 else 1.0
            print(
                f"{f'{ncpus} CPUs/{nranges} ranges':<22}{mb:>6}M"
                f"{r['prepare_ms']:>12.1f}{r['burst_ms']:>10.2f}{ratio:>7.2f}"
                f"{r['load_args_ms']:>14.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
