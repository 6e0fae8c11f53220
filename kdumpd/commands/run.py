"""``kdumpd run``: the hotplug-aware crash-image daemon."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from kdumpd.core.errors import KdumpdError
from kdumpd.daemon.backends import BACKEND_NAMES

NAME = "run"
HELP = "run the daemon: keep the loaded crash image current across CPU/memory hotplug"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="TOML file (default /etc/kdumpd/kdumpd.toml)"
    )
    parser.add_argument("--sysroot", metavar="DIR", help="read /proc and /sys below DIR")
    parser.add_argument("--backend", choices=("auto", *BACKEND_NAMES), help="override the probe")
    parser.add_argument("--state-dir", metavar="DIR", help="state.json and dry-run loads")
    parser.add_argument(
        "--event-source",
        # "kernel": the deprecated name kdumpd.config maps to netlink (and warns about)
        choices=("auto", "udev", "netlink", "kernel"),
        metavar="{auto,udev,netlink}",
        help="udev: uevents as udevd re-sends them; netlink: the kernel's own (no udevd"
        " needed); auto (default): udev if udevd runs, else netlink. 'kernel' is a"
        " deprecated name for netlink",
    )
    parser.add_argument("--replay", metavar="FILE", help="feed events from a replay file")
    parser.add_argument(
        "--speed", type=float, default=1.0, metavar="N", help="replay time scale (0 = no waits)"
    )
    parser.add_argument("--no-dbus", action="store_true", help="do not publish on D-Bus")
    parser.add_argument(
        "--metrics-file",
        metavar="FILE",
        help="write Prometheus metrics to FILE (e.g. in node_exporter's textfile directory)",
    )


def _daemon_log_level() -> None:
    """A daemon logs what it applies (INFO) unless told otherwise (-v/-vv, KDUMPD_LOG_LEVEL)."""
    import logging
    import os

    logger = logging.getLogger("kdumpd")
    if not os.environ.get("KDUMPD_LOG_LEVEL") and logger.level == logging.WARNING:
        logger.setLevel(logging.INFO)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sysroot": getattr(args, "sysroot", None),
        "backend": getattr(args, "backend", None),
        "state_dir": getattr(args, "state_dir", None),
        "event_source": getattr(args, "event_source", None),
        "metrics_file": getattr(args, "metrics_file", None),
    }
    if getattr(args, "no_dbus", False):
        out["dbus"] = False
    return {k: v for k, v in out.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    from kdumpd.config import load_settings
    from kdumpd.service import Daemon

    if args.speed < 0:
        raise KdumpdError("--speed must be >= 0")
    _daemon_log_level()
    overrides = overrides_from(args)
    settings = load_settings(args.config, overrides)
    daemon = Daemon(
        settings,
        config_path=args.config,
        overrides=overrides,
        replay=args.replay,
        speed=args.speed,
    )
    asyncio.run(daemon.run())
    return 0
