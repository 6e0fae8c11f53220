"""The shipped systemd unit, udev rules and bus files: syntax checked by the real
tools where present, and the unit's sandbox checked against what kdumpd needs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd/kdumpd.service"


def _directives(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
    return out


def test_unit_verifies_with_systemd_analyze(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    unit = tmp_path / "kdumpd.service"
    # Documentation=man:kdumpd(8) is installed by `make install`, not present here.
    text = "\n".join(
        line for line in UNIT.read_text().splitlines() if not line.startswith("Documentation=")
    )
    unit.write_text(text.replace("/usr/bin/kdumpd", "/bin/true") + "\n")
    proc = subprocess.run([tool, "verify", str(unit)], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # verify prints warnings for unknown or misspelt directives without failing
    noise = [line for line in proc.stderr.splitlines() if "kdumpd.service" in line]
    assert noise == []


def test_sandbox_keeps_what_the_reader_and_kexec_need() -> None:
    d = _directives(UNIT.read_text())
    caps = set(d["CapabilityBoundingSet"].split())
    # kexec_file_load; real /proc/iomem addresses; kallsyms addresses; /proc/kcore
    assert {"CAP_SYS_BOOT", "CAP_SYS_ADMIN", "CAP_SYSLOG", "CAP_SYS_RAWIO"} <= caps
    # these silently drop capabilities from the bounding set (systemd.exec(5))
    assert d.get("PrivateDevices", "no") == "no"  # drops CAP_SYS_RAWIO
    assert d.get("ProtectKernelLogs", "no") == "no"  # drops CAP_SYSLOG
    assert d.get("ProtectKernelTunables", "no") == "no"  # hides kcore/kallsyms
    assert "AF_NETLINK" in d["RestrictAddressFamilies"]  # uevents
    # the kernel log (skipped crash-hotplug updates) under DevicePolicy=closed
    assert d.get("DevicePolicy") != "closed" or "/dev/kmsg r" in UNIT.read_text()
    assert "kexec_file_load" in d["SystemCallFilter"]
    assert d["Type"] == "notify" and "WatchdogSec" in d
    assert d["RuntimeDirectoryPreserve"] == "yes"  # state.json survives restarts


def test_dbus_activation_names_the_unit_and_policy_the_name() -> None:
    service = (REPO / "dbus/org.kdumpd1.service").read_text()
    assert re.search(r"^SystemdService=kdumpd\.service$", service, re.M)
    assert re.search(r"^Name=org\.kdumpd1$", service, re.M)
    policy = (REPO / "dbus/org.kdumpd1.conf").read_text()
    assert 'own="org.kdumpd1"' in policy


def test_udev_overrides_and_unit_agree_on_the_active_marker() -> None:
    """The rules skip the per-event reload only while the marker the unit manages
    exists; the unit must create it after start and remove it on every stop."""
    d = _directives(UNIT.read_text())
    marker = "/run/kdumpd/active"
    assert d["ExecStartPost"].endswith(f"touch {marker}")
    assert d["ExecStopPost"].endswith(f"rm -f {marker}")
    assert marker.startswith("/run/kdumpd/") and d["RuntimeDirectory"] == "kdumpd"
    for rules in ("98-kexec.rules", "50-kdump-tools.rules"):
        text = (REPO / "udev" / rules).read_text()
        assert f'TEST=="{marker}"' in text
        assert "systemctl is-active --quiet kdumpd" not in text  # no fork per uevent
