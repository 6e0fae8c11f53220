"""python -m tests.e2e.run [--kernels "6.1 6.12"] [--scenarios "baseline hotplug-add ..."]

Runs each scenario on each kernel in a fresh QEMU guest (without --scenarios and
--backends also the rows of ``scenarios.EXTRA_ROWS``: a back-end or firmware on one
kernel), writes
build/e2e/report.json and prints the table.  Exit status 0 when every row passed,
1 when any failed or errored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.e2e import report, scenarios
from tests.e2e.guest import qemu_available

REPO = Path(__file__).resolve().parents[2]
DEFAULT_KERNELS = "6.1 6.12"
DEFAULT_SCENARIOS = (
    "baseline hotplug-add hotplug-remove burst crash-during-burst load-race segment-corrupt"
)
DEFAULT_SCENARIOS_PPC64LE = "baseline hotplug-add hotplug-remove burst late-start"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.e2e.run", description=__doc__)
    p.add_argument("--kernels", default=DEFAULT_KERNELS, help="6.1, 6.12 or paths (.deb/unpacked)")
    p.add_argument("--scenarios", default=None)
    p.add_argument(
        "--arch",
        default="x86_64",
        choices=("x86_64", "ppc64le"),
        help="guest architecture (ppc64le: QEMU pseries, Debian ppc64el kernels)",
    )
    p.add_argument(
        "--backends",
        default="auto",
        help="the daemon's back-end for the kdumpd rows: auto, segment, file, ... (each runs)",
    )
    p.add_argument("--out", default=str(REPO / "build" / "e2e"))
    args = p.parse_args(argv)
    arch = args.arch
    why = qemu_available(arch)
    if why:
        print(f"e2e: cannot run: {why}", file=sys.stderr)
        return 1
    ppc = arch == "ppc64le"
    aliases = scenarios.ALIASES_PPC64LE if ppc else scenarios.ALIASES
    chosen = args.scenarios or (DEFAULT_SCENARIOS_PPC64LE if ppc else DEFAULT_SCENARIOS)
    names: list[str] = []
    for s in chosen.split():
        for n in aliases.get(s, [s]):
            if n not in scenarios.SCENARIOS:
                p.error(f"unknown scenario {n!r} (known: {', '.join(scenarios.SCENARIOS)})")
            if n not in scenarios.ARCH_SCENARIOS[arch]:
                print(f"e2e: {n}: skipped (not a {arch} scenario)", file=sys.stderr)
                continue
            names.append(n)
    # the daemon's back-end matters only for the kdumpd rows
    rows = [
        (n, b)
        for n in names
        for b in (args.backends.split() if n not in scenarios.NO_DAEMON else ["auto"])
    ]
    rows = list(dict.fromkeys(rows))
    matrix = [(k, n, b) for k in args.kernels.split() for n, b in rows]
    if args.scenarios is None and args.backends == "auto" and not ppc:
        # the default matrix (make e2e) also has rows for a chosen back-end on one kernel
        kernels = args.kernels.split()
        matrix += [r for r in scenarios.EXTRA_ROWS if r[0] in kernels and r not in matrix]
    out = Path(args.out)
    results = []
    for k, n, b in matrix:
        only = scenarios.ONLY_ON.get(n)
        name = scenarios.row_name(n, b)
        if only is not None and k not in only:
            print(f"e2e: {k} {name}: skipped (only on {' '.join(sorted(only))})", file=sys.stderr)
            continue
        print(f"e2e: {arch} {k} {name} ...", file=sys.stderr, flush=True)
        r = scenarios.run(k, n, out, arch, b)
        print(
            f"e2e: {k} {name}: {report.verdict(r)} ({r.duration_s}s)",
            file=sys.stderr,
            flush=True,
        )
        results.append(r)
        report.write(results, out / "report.json")
    print(report.table(results))
    print(f"\nreport: {out / 'report.json'}")
    return 0 if all(report.verdict(r) == "pass" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
