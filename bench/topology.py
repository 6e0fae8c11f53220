"""Benchmark: read a topology snapshot from an 8,192-CPU / 8,192-memory-block sysroot.

    .venv/bin/python bench/topology.py [--runs N] [--cpus N] [--blocks N]

Rows (median and best of ``--runs``, milliseconds):

* ``read_topology`` - :func:`kdumpd.system.topologyreader.read_topology` of a tree written by
  ``tests/fixtures/make_fixture.py --big`` (per CPU: crash_notes + crash_notes_size;
  per block: state + online; /proc/iomem with one System RAM line per block).
* ``read_capabilities`` - the cheap re-probe the daemon runs after each burst.
* baseline - a straightforward reader of the same files (``pathlib.Path.read_text``
  per file, ``int()`` per value) measured in the same run; the ratio column is
  baseline / kdumpd.

The tree lives on the filesystem of ``--dir`` (default: a temporary directory), so the
numbers include real open/read/close system calls, as sysfs reads do.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdumpd.system.kexecsysfs import read_capabilities  # noqa: E402
from kdumpd.system.topologyreader import TopologyReader, read_topology  # noqa: E402
from tests.fixtures import make_fixture  # noqa: E402


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    fn()  # warm the dentry cache and the interpreter
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples), min(samples)


def baseline(root: Path) -> tuple[int, int]:
    """Read the same per-CPU and per-block files the obvious way."""
    cpu = root / "sys/devices/system/cpu"
    notes = 0
    for d in sorted(cpu.glob("cpu[0-9]*"), key=lambda p: int(p.name[3:])):
        try:
            int((d / "crash_notes").read_text().strip(), 16)
            int((d / "crash_notes_size").read_text().strip())
        except FileNotFoundError:
            continue
        notes += 1
    mem = root / "sys/devices/system/memory"
    blocks = 0
    for d in sorted(mem.glob("memory[0-9]*"), key=lambda p: int(p.name[6:])):
        (d / "state").read_text().strip()
        int((d / "online").read_text().strip())
        blocks += 1
    return notes, blocks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--cpus", type=int, default=8192)
    ap.add_argument("--blocks", type=int, default=8192)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the tree")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = make_fixture.write_tree(
            Path(tmp) / "big", make_fixture.big(ncpus=args.cpus, nblocks=args.blocks)
        )
        t = read_topology(root)
        assert len(t.crash_notes) == args.cpus
        assert len(t.memory_blocks) == args.blocks
        assert baseline(root) == (args.cpus, args.blocks)

        topo_med, topo_min = timed(lambda: read_topology(root), args.runs)
        caps_med, caps_min = timed(lambda: read_capabilities(root), args.runs)
        base_med, base_min = timed(lambda: baseline(root), args.runs)

    print(
        f"sysroot: {args.cpus} CPUs, {args.blocks} memory blocks, "
        f"{len(t.iomem)} iomem lines; {args.runs} runs"
    )
    print(f"{'what':<34}{'median ms':>10}{'best ms':>10}{'ratio':>8}")
    print(f"{'read_topology':<34}{topo_med:>10.1f}{topo_min:>10.1f}{base_med / topo_med:>7.2f}x")
    print(f"{'read_capabilities':<34}{caps_med:>10.2f}{caps_min:>10.2f}{'':>8}")
    print(f"{'baseline (pathlib, notes+blocks)':<34}{base_med:>10.1f}{base_min:>10.1f}{1:>7.2f}x")
    live_burst(args.runs)
    return 0


def live_burst(runs: int) -> None:
    """The daemon's per-burst snapshot of this machine (sysroot /): a fresh
    read_topology (baseline: re-reads /proc/kallsyms, /proc/kcore) against the
    TopologyReader the reconciler keeps (kernel facts and lock-taking capability
    files read once)."""
    try:
        read_topology("/")
    except Exception as err:  # a container without /proc/iomem, etc.
        print(f"\nlive machine: skipped ({err})")
        return
    reader = TopologyReader("/")
    reader()
    fresh_med, fresh_min = timed(lambda: read_topology("/"), runs)
    kept_med, kept_min = timed(reader, runs)
    print(f"\nlive machine (sysroot /), per-burst snapshot; {runs} runs")
    print(f"{'what':<34}{'median ms':>10}{'best ms':>10}{'ratio':>8}")
    print(
        f"{'TopologyReader (daemon)':<34}{kept_med:>10.2f}{kept_min:>10.2f}"
        f"{fresh_med / kept_med:>7.1f}x"
    )
    print(
        f"{'baseline: read_topology each time':<34}{fresh_med:>10.2f}{fresh_min:>10.2f}{1:>7.2f}x"
    )


if __name__ == "__main__":
    sys.exit(main())
