"""A private, system-like ``dbus-daemon`` for tests (shared by the D-Bus tests and the
D-Bus benchmark).

The generated configuration mirrors Debian's ``/usr/share/dbus-1/system.conf``
(default deny for owning names and for method calls) and ``<include>``s the project's
own ``dbus/org.kdumpd1.conf``, so the policy under test is the file we ship.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "dbus" / "org.kdumpd1.conf"

_SYSTEM_LIKE = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus.Debug.Stats"/>
  </policy>
  {extra}
</busconfig>
"""

# Everyone may own and call everything: shows the service's own uid check.
_PERMISSIVE_POLICY = """<policy context="default">
    <allow own="*"/>
    <allow send_type="method_call"/>
  </policy>"""


# What Debian's org.freedesktop.PolicyKit1.conf says: polkitd (running as the polkitd
# user) owns the name, anyone may ask it.
_POLKIT_POLICY = """<policy user="polkitd">
    <allow own="org.freedesktop.PolicyKit1"/>
  </policy>
  <policy context="default">
    <allow send_destination="org.freedesktop.PolicyKit1"/>
  </policy>"""


@dataclass
class PrivateBus:
    address: str
    socket: Path
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def plain_address(self) -> str:
        """The address without the bus's guid (stays valid across a restart)."""
        return f"unix:path={self.socket}"

    def kill(self) -> None:
        """Crash the bus (SIGKILL), leaving its directory for :meth:`restart`."""
        self.process.kill()
        self.process.wait(5)

    def restart(self) -> None:
        """Start a new dbus-daemon on the same socket and configuration."""
        self.socket.unlink(missing_ok=True)
        self.process = _launch(self.directory / "system.conf")[0]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.directory, ignore_errors=True)


def dbus_daemon_path() -> str | None:
    return shutil.which("dbus-daemon")


def start_bus(
    *, permissive: bool = False, servicedir: Path | None = None, polkit: bool = False
) -> PrivateBus:
    """Start a private system-like bus.  ``permissive`` replaces the project policy by
    one that lets anyone call anything (to reach the service's own access check).
    ``servicedir`` holds activation files (no <servicehelper>: Exec= runs directly).
    ``polkit`` lets polkitd own ``org.freedesktop.PolicyKit1`` on it."""
    if dbus_daemon_path() is None:
        raise FileNotFoundError("dbus-daemon")
    directory = Path(tempfile.mkdtemp(prefix="kdumpd-bus-"))
    directory.chmod(0o755)  # uid 65534 must reach the socket
    sock = directory / "system_bus_socket"
    extra = _PERMISSIVE_POLICY if permissive else f"<include>{POLICY}</include>"
    if servicedir is not None:
        extra += f"\n  <servicedir>{servicedir}</servicedir>"
    if polkit:
        extra += "\n  " + _POLKIT_POLICY
    conf = directory / "system.conf"
    conf.write_text(_SYSTEM_LIKE.format(socket=sock, extra=extra))
    conf.chmod(0o644)
    try:
        proc, line = _launch(conf)
    except RuntimeError:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return PrivateBus(address=line, socket=sock, directory=directory, process=proc)


def _launch(conf: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = dbus_daemon_path()
    if binary is None:
        raise FileNotFoundError("dbus-daemon")
    proc = subprocess.Popen(
        [binary, f"--config-file={conf}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "DBUS_VERBOSE": "0"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"dbus-daemon did not start with {conf}")
    return proc, line
