"""python -m tests.e2e.run [--kernels "6.1 6.12"] [--scenarios "baseline hotplug-add ..."]

Runs each scenario on each kernel in a fresh QEMU guest, writes
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.e2e.run", description=__doc__)
    p.add_argument("--kernels", default=DEFAULT_KERNELS, help="6.1, 6.12 or paths (.deb/unpacked)")
    p.add_argument("--scenarios", default=DEFAULT_SCENARIOS)
    p.add_argument("--out", default=str(REPO / "build" / "e2e"))
    args = p.parse_args(argv)
    why = qemu_available()
    if why:
        print(f"e2e: cannot run: {why}", file=sys.stderr)
        return 1
    names: list[str] = []
    for s in args.scenarios.split():
        for n in scenarios.ALIASES.get(s, [s]):
            if n not in scenarios.SCENARIOS:
                p.error(f"unknown scenario {n!r} (known: {', '.join(scenarios.SCENARIOS)})")
            names.append(n)
    out = Path(args.out)
    results = []
    for k in args.kernels.split():
        for n in names:
            only = scenarios.ONLY_ON.get(n)
            if only is not None and k not in only:
                print(f"e2e: {k} {n}: skipped (only on {' '.join(sorted(only))})", file=sys.stderr)
                continue
            print(f"e2e: {k} {n} ...", file=sys.stderr, flush=True)
            r = scenarios.run(k, n, out)
            print(
                f"e2e: {k} {n}: {report.verdict(r)} ({r.duration_s}s)", file=sys.stderr, flush=True
            )
            results.append(r)
            report.write(results, out / "report.json")
    print(report.table(results))
    print(f"\nreport: {out / 'report.json'}")
    return 0 if all(report.verdict(r) == "pass" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
