"""Runs *inside* the guest (``chroot /host /usr/bin/python3 -m tests.e2e.guest_agent``),
standard library only.

``sample OUT``: polls /sys/kernel/kexec_crash_loaded every millisecond and listens to
kernel uevents (NETLINK_KOBJECT_UEVENT) for the cpu and memory subsystems; appends
one JSON line per uevent and per crash_loaded transition to OUT.  On SIGTERM writes
a summary line.

``udev-reload OUT KERNEL INITRD APPEND``: what the distro udev rules do: for every
cpu/memory online/offline uevent, ``kexec -p -u`` then ``kexec -p ...`` (in order, one
at a time).  Appends one JSON line per reload to OUT.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

NETLINK_KOBJECT_UEVENT = 15
CRASH_LOADED = "/sys/kernel/kexec_crash_loaded"
SUBSYSTEMS = {"cpu", "memory"}


def _uevent_socket() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    s.bind((0, 1))  # group 1: kernel uevents
    s.setblocking(False)
    return s


def _parse(data: bytes) -> dict[str, str] | None:
    parts = data.split(b"\0")
    if not parts or b"@" not in parts[0]:
        return None
    env: dict[str, str] = {}
    for p in parts[1:]:
        k, sep, v = p.partition(b"=")
        if sep:
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    if env.get("SUBSYSTEM") not in SUBSYSTEMS:
        return None
    return env


def _write(f: Any, rec: dict[str, Any]) -> None:
    f.write(json.dumps(rec) + "\n")
    f.flush()


def sample(out: str) -> int:
    stop = False

    def on_term(_sig: int, _frm: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sock = _uevent_socket()
    f = open(out, "a")  # noqa: SIM115
    fd = os.open(CRASH_LOADED, os.O_RDONLY)
    prev = ""
    since = time.monotonic()
    no_image = 0.0
    gaps = 0
    samples = 0
    first_loaded = False
    last_change = since
    events = 0
    _write(f, {"kind": "start", "t": time.time(), "mono": since})
    while not stop:
        now = time.monotonic()
        v = os.pread(fd, 8, 0).decode().strip()
        samples += 1
        if v != prev:
            if prev == "0" and first_loaded:
                no_image += now - last_change
            if v == "0" and first_loaded:
                gaps += 1
            if v == "1":
                first_loaded = True
            _write(f, {"kind": "crash_loaded", "v": v, "t": time.time(), "mono": now})
            prev, last_change = v, now
        r, _, _ = select.select([sock], [], [], 0.001)
        if r:
            while True:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    break
                env = _parse(data)
                if env is not None:
                    events += 1
                    _write(
                        f,
                        {
                            "kind": "uevent",
                            "action": env.get("ACTION"),
                            "subsystem": env.get("SUBSYSTEM"),
                            "devpath": env.get("DEVPATH"),
                            "t": time.time(),
                            "mono": time.monotonic(),
                        },
                    )
    now = time.monotonic()
    if prev == "0" and first_loaded:
        no_image += now - last_change
    _write(
        f,
        {
            "kind": "summary",
            "no_image_ms": round(no_image * 1000, 3),
            "gaps": gaps,
            "samples": samples,
            "uevents": events,
            "loaded": prev,
            "t": time.time(),
        },
    )
    f.close()
    return 0


def udev_reload(out: str, kernel: str, initrd: str, append: str) -> int:
    sock = _uevent_socket()
    f = open(out, "a")  # noqa: SIM115
    _write(f, {"kind": "start", "t": time.time()})
    while True:
        select.select([sock], [], [])
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            continue
        env = _parse(data)
        if env is None or env.get("ACTION") not in ("online", "offline"):
            continue
        t0 = time.time()
        u = subprocess.run(["kexec", "-p", "-u"], capture_output=True, check=False)
        r = subprocess.run(
            ["kexec", "-p", kernel, f"--initrd={initrd}", f"--append={append}"],
            capture_output=True,
            text=True,
            check=False,
        )
        _write(
            f,
            {
                "kind": "reload",
                "event": f"{env.get('SUBSYSTEM')}/{env.get('ACTION')} {env.get('DEVPATH')}",
                "unload_rc": u.returncode,
                "load_rc": r.returncode,
                "err": r.stderr.strip()[-200:],
                "t0": t0,
                "t": time.time(),
            },
        )


def main(argv: list[str]) -> int:
    if argv and argv[0] == "sample" and len(argv) == 2:
        return sample(argv[1])
    if argv and argv[0] == "udev-reload" and len(argv) == 5:
        return udev_reload(*argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
