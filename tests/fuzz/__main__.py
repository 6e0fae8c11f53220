"""``python -m tests.fuzz [--cases N] [--jobs J] [TARGET ...]``: run the fuzz targets.

Each target runs in its own process (``--jobs`` at a time) with a per-case time limit
(a case that runs longer is a hang) and a per-target time budget.  Exit status 0 when
every target ran its cases with no finding, 1 otherwise.  Each finding class is
printed with its count and first traceback; its input is written below
``--findings DIR`` for reproduction (``--reproduce FILE --target NAME``).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import multiprocessing
import sys
import time
from pathlib import Path

from tests.fuzz.targets import all_targets, run_named


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("targets", nargs="*", help="default: all")
    parser.add_argument("--cases", type=int, default=100_000, help="cases per target")
    parser.add_argument("--jobs", type=int, default=2, help="targets run in parallel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=2.0, help="seconds per case")
    parser.add_argument(
        "--budget", type=float, default=1800.0, help="seconds per target (then it stops)"
    )
    parser.add_argument("--findings", type=Path, default=Path(".fuzz-findings"))
    parser.add_argument("--reproduce", type=Path, help="run one saved input (with --target)")
    parser.add_argument("--target", help="the target of --reproduce")
    args = parser.parse_args(argv)

    known = all_targets()
    if args.reproduce is not None:
        if args.target not in known:
            parser.error(f"--target must be one of {', '.join(known)}")
        with known[args.target]().setup() as run:
            run(args.reproduce.read_bytes())
        print("no exception")
        return 0
    names = args.targets or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(known)}")

    failed = False
    t0 = time.monotonic()
    ctx = multiprocessing.get_context("forkserver")
    with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        futures = {
            pool.submit(run_named, n, args.cases, args.seed, args.time_limit, args.budget): n
            for n in names
        }
        for fut in cf.as_completed(futures):
            name = futures[fut]
            try:
                res = fut.result()
            except Exception as err:  # the target's setup failed, or the worker died
                print(f"{name}: did not run: {type(err).__name__}: {err}", flush=True)
                failed = True
                continue
            rate = res.cases / res.seconds if res.seconds else 0.0
            short = res.cases < args.cases
            status = "ok" if res.ok and not short else "FAIL"
            print(
                f"{name:14} {status:4} {res.cases:>8} cases in {res.seconds:7.1f} s "
                f"({rate:7.0f}/s), {res.kdumpd_errors} rejections (kdumpd errors, skipped lines, "
                "dropped uevents, D-Bus error replies)"
                + (f"; stopped by the {args.budget:.0f} s budget" if short else ""),
                flush=True,
            )
            failed |= status != "ok"
            for finding in res.findings.values():
                digest = hashlib.sha256(finding.first_input).hexdigest()[:12]
                out = args.findings / name / f"{digest}.bin"
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(finding.first_input)
                print(f"  finding x{finding.count}: {finding.key}  (input: {out})")
                print("    " + finding.traceback.strip().replace("\n", "\n    "))
    print(f"total {time.monotonic() - t0:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
