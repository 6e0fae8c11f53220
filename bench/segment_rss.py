#!/usr/bin/env python3
"""Idle RSS of ``kdumpd run`` with the ``segment`` back-end and a 64 MiB initrd.

Run from the repository root: ``.venv/bin/python bench/segment_rss.py`` (needs the
built purgatory).  The daemon runs on the demo sysroot (Debian 6.1 guest, 256 MiB
``Crash kernel``) with Debian's 6.1 bzImage when it is cached (else a synthetic one)
and a 64 MiB random initrd; its ``kexec_load`` goes through the real ctypes wrapper
(buffer protocol, mlock/munlock) with the syscall itself replaced by a no-op, so
nothing reaches this machine's kernel.  Printed: VmRSS (and its anonymous, file and
shmem parts: the demo sysroot, kernel and initrd included, lives on tmpfs) 5 s after
READY=1, with and without the segment back-end's page release.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from segment_burst import initrd_file, kernel_file  # noqa: E402

from kdumpd.demo import demo_sysroot  # noqa: E402

CHILD = """
import sys
from kdumpd.system import kexec
class NoSyscallKexec(kexec.LinuxKexec):
    def __init__(self, machine=None):
        super().__init__("x86_64")
        self._syscall = lambda *args: 0   # the wrapper runs; the kernel sees nothing
kexec.LinuxKexec = NoSyscallKexec
if "--keep-pages" in sys.argv:
    sys.argv.remove("--keep-pages")
    kexec.MappedFile.release_pages = lambda self: None
from kdumpd.cli import main
sys.exit(main(sys.argv[1:]))
"""


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(line.split()[1])
    return out


def run(base: Path, config: Path, keep_pages: bool) -> dict[str, int]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(base / f"notify-{keep_pages}.sock")
    sock.bind(path)
    sock.settimeout(120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY", "WATCHDOG"))}
    env["NOTIFY_SOCKET"] = path
    env["PYTHONPATH"] = str(REPO)
    args = [sys.executable, "-c", CHILD, "run", "--config", str(config)]
    args += ["--sysroot", str(base / "sysroot"), "--state-dir", str(base / f"state{keep_pages}")]
    args += ["--backend", "segment", "--no-dbus", "--event-source", "netlink"]
    if keep_pages:
        args.append("--keep-pages")
    log = base / f"kdumpd-{keep_pages}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            while b"READY=1" not in sock.recv(4096):
                pass
            time.sleep(5)
            st = status(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)
            sock.close()
    text = log.read_text(errors="replace")
    if "kexec_load 5 segments" not in text:
        raise SystemExit(f"the daemon did not load its segments:\n{text[-2000:]}")
    return st


def main() -> int:
    with tempfile.TemporaryDirectory() as d, demo_sysroot() as base:
        tmp = Path(d)
        boot = base / "sysroot" / "boot"  # [kexec] paths are below the sysroot
        boot.mkdir(exist_ok=True)
        (boot / "vmlinuz").write_bytes(kernel_file(tmp).read_bytes())
        (boot / "initrd.img").write_bytes(initrd_file(tmp, 64).read_bytes())
        config = tmp / "kdumpd.toml"
        config.write_text(
            '[kexec]\nkernel = "/boot/vmlinuz"\ninitrd = "/boot/initrd.img"\n'
            'cmdline = "console=ttyS0"\n'
        )
        for keep in (False, True):
            st = run(base, config, keep)
            what = "pages kept mapped" if keep else "pages released after the load"
            print(
                f"segment, 64 MiB initrd, {what:<30} VmRSS {st['VmRSS'] / 1024:6.1f} MiB "
                f"(anon {st['RssAnon'] / 1024:.1f}, file {st['RssFile'] / 1024:.1f}, "
                f"shmem {st.get('RssShmem', 0) / 1024:.1f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
