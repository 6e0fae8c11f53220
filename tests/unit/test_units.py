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
    """Directive -> value; a directive given more than once has its values joined
    with spaces (as systemd merges list settings such as SystemCallFilter=)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out[key] = f"{out[key]} {value}" if key in out else value
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
    assert caps == {"CAP_SYS_BOOT", "CAP_SYS_ADMIN", "CAP_SYSLOG", "CAP_SYS_RAWIO"}
    # these silently drop capabilities from the bounding set (systemd.exec(5))
    assert d.get("PrivateDevices", "no") == "no"  # drops CAP_SYS_RAWIO
    assert d.get("ProtectKernelLogs", "no") == "no"  # drops CAP_SYSLOG, hides /dev/kmsg
    assert d.get("ProtectKernelTunables", "no") == "no"  # hides kcore/kallsyms
    assert d.get("ProcSubset", "all") == "all"  # hides /proc/iomem, kcore, kallsyms
    # capabilities must count in the initial user namespace, and uevents only reach
    # network namespaces it owns
    assert d.get("PrivateUsers", "no") == "no"
    assert "AF_NETLINK" in d["RestrictAddressFamilies"]  # uevents
    assert "kexec_file_load" in d["SystemCallFilter"]
    # the kernel-log watcher (skipped crash-hotplug updates) reads /dev/kmsg past
    # DevicePolicy=closed
    assert d["DevicePolicy"] == "closed" and "/dev/kmsg r" in d["DeviceAllow"]
    assert d["Type"] == "notify" and "WatchdogSec" in d
    assert d["RuntimeDirectoryPreserve"] == "yes"  # state.json survives restarts


def test_private_network_goes_with_kernel_uevents() -> None:
    """udevd's re-sent events do not cross network namespaces; kernel uevents do
    (tests/integration/test_sandbox.py proves it with a real uevent)."""
    d = _directives(UNIT.read_text())
    assert d["PrivateNetwork"] == "yes"
    assert "--event-source netlink" in d["ExecStart"]


def test_every_flagged_sandbox_item_is_justified_in_the_unit_and_the_docs() -> None:
    unit = UNIT.read_text()
    design = (REPO / "docs/design.md").read_text()
    for item in (
        "User=",
        "PrivateUsers=",
        "PrivateDevices=",
        "ProtectKernelLogs=",
        "ProtectKernelTunables=",
        "ProcSubset=",
        "CAP_SYS_RAWIO",
        "CAP_SYS_ADMIN",
        "CAP_SYSLOG",
        "CAP_SYS_BOOT",
        "CAP_NET_ADMIN",
        "@reboot",
        "AF_NETLINK",
        "DeviceAllow=",
    ):
        assert item in unit, item
        assert item in design, item


def test_security_exposure_is_at_most_2_5() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    proc = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(UNIT)],
        check=False,
        capture_output=True,
        text=True,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    if m is None:
        pytest.skip(f"this systemd-analyze cannot rate a unit offline: {proc.stderr[:200]}")
    assert float(m.group(1)) <= 2.5, proc.stdout


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
