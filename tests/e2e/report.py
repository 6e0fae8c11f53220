"""build/e2e/report.json and the same as a table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tests.e2e.scenarios import Result


def verdict(r: Result) -> str:
    if r.error:
        return "ERROR"
    return "pass" if r.passed else "FAIL"


def write(results: Sequence[Result], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def _yes(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "no")


def table(results: Sequence[Result]) -> str:
    cols = (
        "arch", "kernel", "scenario", "backend", "crash on", "dump", "cpus", "PRSTATUS",
        "RAM MiB missing", "extra MiB", "vmcore MB", "elfcorehdr", "ours", "purgatory",
        "complete", "expect", "events", "uevents", "loads", "settle ms", "no-image ms", "result",
    )  # fmt: skip
    rows = []
    for r in results:
        rows.append(
            (
                r.arch,
                r.kernel,
                r.scenario
                if r.requested_backend == "auto"
                else f"{r.scenario}@{r.requested_backend}",
                r.backend,
                f"cpu{r.crash_cpu}" if r.crash_cpu is not None else "any",
                ("yes" if r.dump else "NO") if not r.error else "-",
                _fmt(len(r.cpus_online)) if not r.error else "-",
                _fmt(len(r.prstatus_cpus)) if not r.error else "-",
                _fmt(r.missing_mb) if not r.error else "-",
                _fmt(r.extra_mb) if not r.error else "-",
                _fmt(round(r.vmcore_size / 1e6)) if r.vmcore_size else "-",
                r.elfcorehdr_addr or "-",
                _yes(r.elfcorehdr_ours),
                _yes(r.purgatory_entered),
                ("yes" if r.complete else "NO") if not r.error else "-",
                r.expect,
                _fmt(r.events),
                _fmt(r.uevents),
                _fmt(r.loads),
                _fmt(r.settle_ms),
                _fmt(r.no_image_ms),
                verdict(r),
            )
        )
    widths = [
        max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    for r in results:
        if r.capture_dt_cpus or r.arch == "ppc64le":
            lines.append(
                f"\n{r.arch} {r.kernel} {r.scenario}: capture kernel /proc/device-tree/cpus:"
            )
            lines.extend(f"  {c}" for c in r.capture_dt_cpus or ["(no capture kernel)"])
            cmp = r.detail.get("fdt_compare")
            if cmp and "equal" in cmp:
                verdict_ = "same CPU nodes" if cmp["equal"] else f"DIFFERENT: {cmp}"
                lines.append(f"  kdumpd fdt for the topology at the crash: {verdict_}")
    for r in results:
        if r.error:
            lines.append(f"\nERROR {r.kernel} {r.scenario}: {r.error}")
    return "\n".join(lines)
