"""``kdumpd replay``: feed a recorded event file to the daemon, exit once it is applied.

The replay writes the file's ``files`` below ``--sysroot``, so the sysroot must not be
``/``, and the back-end is always dry-run (``--backend`` accepts only ``auto``, which
means dry-run, and ``dry-run``; anything else is a usage error, exit status 2): a
fixture must never reach kexec.

Exit status 0 when every valid event was delivered and the resulting image applied
(the final state is ``loaded`` and not stale), 1 otherwise.  Bad lines are reported
(``FILE:LINE: problem``) and skipped; they make the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from kdumpd.core.errors import InputError, KdumpdError

NAME = "replay"
HELP = "replay recorded hotplug events against a sysroot and apply the result"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="JSON-lines replay (docs/replay-format.md)")
    parser.add_argument("--config", metavar="FILE")
    parser.add_argument("--sysroot", metavar="DIR", required=True)
    parser.add_argument(
        "--backend",
        choices=("auto", "dry-run"),
        default="dry-run",
        help="always dry-run (auto means dry-run): a fixture must never reach kexec",
    )
    parser.add_argument("--state-dir", metavar="DIR", required=True)
    parser.add_argument(
        "--speed",
        type=float,
        default=0.0,
        metavar="N",
        help="time scale for 'at' (default 0: as fast as possible)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--metrics-file", metavar="FILE", help="write Prometheus metrics to FILE as `run` does"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kdumpd.config import load_settings
    from kdumpd.service import Daemon

    if args.speed < 0:
        raise KdumpdError("--speed must be >= 0")
    if not Path(args.file).is_file():
        raise InputError(args.file, "replay file does not exist")
    if not Path(args.sysroot, "proc/iomem").is_file():
        raise InputError(args.sysroot, "not a sysroot (no proc/iomem)")
    overrides = {
        "sysroot": args.sysroot,
        "backend": args.backend,
        "state_dir": args.state_dir,
        "dbus": False,
        "metrics_file": args.metrics_file,
    }
    settings = load_settings(args.config, overrides)
    daemon = Daemon(settings, replay=args.file, speed=args.speed, exit_after_replay=True)
    result = asyncio.run(daemon.run())
    st = result.state
    stats = result.replay
    summary = {
        "events_delivered": stats.delivered if stats else 0,
        "lines_skipped": stats.skipped if stats else 0,
        "events_received": st["events_received"],
        "events_coalesced": st["events_coalesced"],
        "regenerations": st["regenerations"],
        "loads": st["loads"],
        "generation": st["generation"],
        "state": st["state"],
        "stale": st["stale"],
        "backend": st["backend"],
        "covered_cpus": len(st["covered_cpus"]),
        "covered_ranges": len(st["covered_ranges"]),
        "last_event_to_applied_ms": (
            round(result.last_event_to_applied * 1000, 1)
            if result.last_event_to_applied is not None
            else None
        ),
        "last_error": st["last_error"],
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        for k, v in summary.items():
            print(f"{k:26} {'none' if v is None else v}")
    ok = st["state"] == "loaded" and not st["stale"] and summary["lines_skipped"] == 0
    if not ok:
        print(
            f"kdumpd replay: not applied cleanly (state {st['state']}, stale {st['stale']}, "
            f"{summary['lines_skipped']} bad lines)",
            file=sys.stderr,
        )
    return 0 if ok else 1
