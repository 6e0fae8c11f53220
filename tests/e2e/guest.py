"""One QEMU (TCG) guest with CPU/DIMM hotplug slots, a QMP socket, the console on a
file and a command channel on a second console.

x86_64 (q35): the guest's ``/init`` (see initramfs.py) mounts the host root read-only
over 9p at ``/host`` and a writable per-run directory at ``/out`` (``/host/mnt``
inside the chroot), so the guest runs the host's ``/usr/sbin/kexec`` and the
project's own ``.venv/bin/kdumpd`` with ``chroot /host``.

ppc64le (pseries, POWER9): the host root cannot run there; ``/host`` is the ppc64el
root of tests/e2e/pyroot.py (Debian's Python, kexec-tools, busybox, dbus-daemon,
the project's dependencies), with the checkout at ``/src`` and the e2e cache (kernels,
initramfs) at ``/cache``, both read-only; the daemon runs as ``python3 -m kdumpd.cli``
with ``PYTHONPATH=/src``.  The console is a ``spapr-vty`` (``hvc0``); the command
channel a ``virtserialport`` (``/dev/vport*p1``): a second ``spapr-vty`` is polled by
the hvc driver with a back-off of up to 2 s per read.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.kernels import CACHE, Kernel
from tests.e2e.qmp import QMP

REPO = Path(__file__).resolve().parents[2]

QEMU = "qemu-system-x86_64"
#: Debian's ovmf package (UEFI firmware for x86_64 guests: the efi-* rows)
OVMF_DIR = Path("/usr/share/OVMF")
QEMU_BY_ARCH = {"x86_64": QEMU, "ppc64le": "qemu-system-ppc64"}
APT_BY_ARCH = {"x86_64": "qemu-system-x86", "ppc64le": "qemu-system-ppc"}
# acpi_no_memhotplug: without it the capture kernel re-adds every present DIMM
# through ACPI and spends its 256M on their memmap (OOM while unpacking the
# initramfs after ~6 GiB of hot-added DIMMs).  Fedora's kdump appends it too.
CAPTURE_APPEND = "console=ttyS0 irqpoll nr_cpus=1 reset_devices panic=-1 acpi_no_memhotplug quiet"
# ppc64: one CPU in the capture kernel (maxcpus=1, as kdump-utils' ppc64 default) and
# no IRQ distribution to CPUs that are not there.
CAPTURE_APPEND_PPC64LE = "console=hvc0 maxcpus=1 noirqdistrib reset_devices panic=-1 quiet"


def capture_append(arch: str) -> str:
    return CAPTURE_APPEND_PPC64LE if arch == "ppc64le" else CAPTURE_APPEND


class GuestError(RuntimeError):
    """The guest did not boot, answer or crash; carries the console tail."""

    def __init__(self, message: str, console_tail: str = "") -> None:
        super().__init__(message)
        self.console_tail = console_tail

    def __str__(self) -> str:
        tail = f"\n--- serial console tail ---\n{self.console_tail}" if self.console_tail else ""
        return f"{self.args[0]}{tail}"


def qemu_available(arch: str = "x86_64") -> str | None:
    """None if QEMU can run here, else the reason it cannot."""
    binary = QEMU_BY_ARCH[arch]
    if shutil.which(binary) is None:
        return f"no {binary} binary (apt-get install {APT_BY_ARCH[arch]})"
    return None


class Guest:
    def __init__(
        self,
        kernel: Kernel,
        initramfs: Path,
        workdir: Path,
        *,
        mem: str = "1G",
        slots: int = 32,
        maxmem: str = "16G",
        maxcpus: int = 4,
        crashkernel: str = "256M",
        extra_append: str = "",
        cpu_hotplug: str = "acpi",
        pyroot: Path | None = None,
        firmware: str = "bios",
    ) -> None:
        self.kernel = kernel
        self.arch = kernel.arch
        self.pyroot = pyroot  # ppc64le: the guest's root (tests/e2e/pyroot.py)
        self.initramfs = initramfs
        self.workdir = workdir
        self.outdir = workdir / "out"
        self.console_path = workdir / "console.log"
        self.qmp_path = workdir / "qmp.sock"
        self.cmd_path = workdir / "cmd.sock"
        self.mem, self.slots, self.maxmem, self.maxcpus = mem, slots, maxmem, maxcpus
        # "acpi": CPUs are hot-added with QMP device_add (the guest starts with one).
        # "logical": all maxcpus CPUs are present at boot, the kernel brings up one
        # (maxcpus=1) and "adding" a CPU means onlining a present, offline one.  Used
        # on 6.12, whose x86 topology code under QEMU 7.2 registers no hotpluggable
        # APIC IDs ("Allowing 1 present CPUs plus 0 hotplug CPUs").
        self.cpu_hotplug = cpu_hotplug
        # "bios": QEMU's SeaBIOS; "ovmf": UEFI (Debian's ovmf), the kernel started by
        # OVMF through its EFI stub, so the guest runs with EFI runtime services
        self.firmware = firmware
        if cpu_hotplug == "logical":
            extra_append = f"maxcpus=1 {extra_append}"
        keep = ":".join(
            str(p) for p in (Path(__file__).resolve().parents[2], CACHE) if " " not in str(p)
        )
        if self.arch == "x86_64":
            extra_append = f"e2e.keep={keep} {extra_append}"
        console = "hvc0" if self.arch == "ppc64le" else "ttyS0"
        self.append = (
            f"console={console} crashkernel={crashkernel} panic=-1 "
            f"memhp_default_state=online_movable loglevel=6 {extra_append}"
        ).strip()
        self.cpu_model = os.environ.get("KDUMPD_E2E_CPU", "max")
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QMP | None = None
        self._cmd: socket.socket | None = None
        self._buf = b""
        self._ids = itertools.count(1)
        self.boot_s = 0.0

    # -- lifecycle --------------------------------------------------------------------

    def _argv_ppc64le(self) -> list[str]:
        assert self.pyroot is not None
        ro = "security_model=none,readonly=on,multidevs=remap"
        return [
            QEMU_BY_ARCH["ppc64le"], "-M", "pseries", "-cpu", "power9", "-accel", "tcg",
            "-m", f"{self.mem},slots={self.slots},maxmem={self.maxmem}",
            "-smp", f"1,maxcpus={self.maxcpus}",
            "-kernel", str(self.kernel.vmlinuz), "-initrd", str(self.initramfs),
            "-append", self.append,
            "-display", "none", "-no-reboot", "-nodefaults",
            "-chardev", f"file,id=con,path={self.console_path}",
            "-device", "spapr-vty,chardev=con",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=cmd,path={self.cmd_path},server=on,wait=off",
            "-device", "virtserialport,chardev=cmd,name=cmd",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-virtfs", f"local,path={self.pyroot},mount_tag=pyroot,{ro}",
            "-virtfs", f"local,path={REPO},mount_tag=src,{ro}",
            "-virtfs", f"local,path={CACHE},mount_tag=cache,{ro}",
            "-virtfs", f"local,path={self.outdir},mount_tag=out,security_model=none",
        ]  # fmt: skip

    def guest_path(self, path: Path | str) -> str:
        """Where a host file (the checkout, the e2e cache) is inside ``chroot /host``."""
        p = Path(path)
        if self.arch != "ppc64le":
            return str(p)
        for host, guest in ((REPO, "/src"), (CACHE, "/cache")):
            if p.is_relative_to(host):
                return f"{guest}/{p.relative_to(host)}"
        raise ValueError(f"{p} is not shared with the guest")

    def start(self, timeout: float = 180.0) -> None:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.outdir.mkdir(parents=True)
        argv = self._argv_ppc64le() if self.arch == "ppc64le" else [
            QEMU, "-accel", "tcg", "-cpu", self.cpu_model, "-M", "q35",
            "-m", f"{self.mem},slots={self.slots},maxmem={self.maxmem}",
            "-smp", self._smp(),
            "-kernel", str(self.kernel.vmlinuz), "-initrd", str(self.initramfs),
            "-append", self.append,
            "-display", "none", "-no-reboot", "-nodefaults",
            "-serial", f"file:{self.console_path}",
            "-chardev", f"socket,id=cmd,path={self.cmd_path},server=on,wait=off",
            "-device", "isa-serial,chardev=cmd",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
            "multidevs=remap",
            "-virtfs", f"local,path={self.outdir},mount_tag=out,security_model=none",
        ]  # fmt: skip
        if self.firmware == "ovmf" and self.arch == "x86_64":
            argv += self._ovmf()
        t0 = time.monotonic()
        (self.workdir / "qemu.cmd").write_text(" ".join(argv) + "\n")
        with open(self.workdir / "qemu.log", "wb") as qlog:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT
            )
        self.qmp = QMP(str(self.qmp_path))
        self.wait_console("@@READY", timeout=timeout)
        for line in self.console().splitlines():
            if line.startswith("@@ERROR"):
                raise GuestError(f"guest setup failed: {line}", self.tail())
        self._connect_cmd()
        self.boot_s = time.monotonic() - t0

    def _ovmf(self) -> list[str]:
        """OVMF's code read-only, a private copy of its variable store (firmware
        writes boot entries there)."""
        code, vars_ = (OVMF_DIR / n for n in ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"))
        if not code.exists() or not vars_.exists():
            raise GuestError(f"no {code} / {vars_.name} (apt-get install ovmf)")
        copy = self.workdir / "OVMF_VARS.fd"
        shutil.copyfile(vars_, copy)
        return [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={copy}",
        ]  # fmt: skip

    def _smp(self) -> str:
        first = self.maxcpus if self.cpu_hotplug == "logical" else 1
        return f"{first},sockets={self.maxcpus},cores=1,threads=1,maxcpus={self.maxcpus}"

    def _connect_cmd(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(self.cmd_path))
        self._cmd = s
        # The guest may not have opened ttyS1 yet: ping until it answers.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                rc, out = self.run("echo pong", timeout=3)
            except TimeoutError:
                continue
            if rc == 0 and out.strip() == "pong":
                return
        raise GuestError("command channel never answered", self.tail())

    def stop(self) -> None:
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                self.qmp.execute("quit")
            self.qmp.close()
            self.qmp = None
        if self._cmd is not None:
            self._cmd.close()
            self._cmd = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    # -- console ----------------------------------------------------------------------

    def console(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        text = "\n".join(self.console().splitlines()[-lines:])
        try:
            qemu = (self.workdir / "qemu.log").read_text(errors="replace").strip()
        except FileNotFoundError:
            qemu = ""
        return text + (f"\n--- QEMU output ---\n{qemu[-2000:]}" if qemu else "")

    def wait_console(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.console(), start)
            if m:
                return m
            if self.proc is not None and self.proc.poll() is not None:
                m = rx.search(self.console(), start)
                if m:
                    return m
                raise GuestError(
                    f"QEMU exited ({self.proc.returncode}) before {pattern!r}", self.tail()
                )
            if time.monotonic() > deadline:
                raise GuestError(
                    f"timed out after {timeout:.0f}s waiting for {pattern!r}", self.tail()
                )
            time.sleep(0.2)

    # -- command channel --------------------------------------------------------------

    def run(self, cmd: str, timeout: float = 120.0) -> tuple[int, str]:
        """Run ``cmd`` with the guest's busybox sh; returns (exit status, output)."""
        assert self._cmd is not None
        trace(f"guest$ {cmd}")
        if "\n" in cmd:
            raise ValueError("one line per command")
        cid = f"c{next(self._ids)}"
        self._cmd.sendall(f"{cid} {cmd}\n".encode())
        end = re.compile(rf"@@END {cid} (\d+)\n".encode())
        deadline = time.monotonic() + timeout
        while True:
            m = end.search(self._buf)
            if m:
                begin = self._buf.find(f"@@BEGIN {cid}\n".encode())
                body = self._buf[begin + len(f"@@BEGIN {cid}\n") : m.start()]
                self._buf = self._buf[m.end() :]
                return int(m.group(1)), body.decode(errors="replace").removesuffix("\n")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"guest command timed out: {cmd}")
            if self.proc is not None and self.proc.poll() is not None:
                raise GuestError(f"QEMU exited while running {cmd!r}", self.tail())
            self._cmd.settimeout(min(left, 1.0))
            try:
                chunk = self._cmd.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise GuestError("command channel closed", self.tail())
            self._buf += chunk

    def check(self, cmd: str, timeout: float = 120.0) -> str:
        rc, out = self.run(cmd, timeout)
        if rc != 0:
            raise GuestError(f"guest command failed ({rc}): {cmd}\n{out}", self.tail(15))
        return out

    def spawn(self, cmd: str) -> None:
        """Start ``cmd`` in the background in the guest (no answer)."""
        assert self._cmd is not None
        self._cmd.sendall(f"! {cmd}\n".encode())

    def host(self, cmd: str, timeout: float = 120.0) -> str:
        """Run ``cmd`` inside ``chroot /host`` (the host's root, read-only)."""
        return self.check(f"chroot /host /bin/sh -c {shquote(cmd)}", timeout)

    # -- guest state ------------------------------------------------------------------

    def read(self, path: str) -> str:
        return self.check(f"cat {path}").strip()

    def online_cpus(self) -> list[int]:
        return parse_cpulist(self.read("/sys/devices/system/cpu/online"))

    def system_ram(self) -> list[tuple[int, int]]:
        return iomem_ranges(self.read("/proc/iomem"), "System RAM", top_level=True)

    def crashkernel(self) -> list[tuple[int, int]]:
        return iomem_ranges(self.read("/proc/iomem"), "Crash kernel")

    def crash(self, timeout: float = 240.0, cpu: int | None = None) -> tuple[str, str, str]:
        """Record the online CPUs and /proc/iomem, panic the guest in the same guest
        command (nothing happens in between but the copies), wait for the capture
        kernel's report.  Returns (report body, cpu online list, iomem text).
        ``cpu``: panic on that CPU (``taskset``), e.g. a hot-added one."""
        start = len(self.console())
        trigger = "echo c > /proc/sysrq-trigger"
        if cpu is not None:
            trigger = f"taskset {1 << cpu:#x} sh -c '{trigger}'"
        self.spawn(
            "cat /sys/devices/system/cpu/online > /out/at-crash-cpus; "
            f"cat /proc/iomem > /out/at-crash-iomem; {trigger}"
        )
        m = self.wait_console(r"(?s)@@VMCORE-BEGIN\n(.*?)@@VMCORE-END", timeout, start)
        cpus = (self.outdir / "at-crash-cpus").read_text()
        iomem = (self.outdir / "at-crash-iomem").read_text()
        return m.group(1), cpus, iomem


def iomem_ranges(text: str, name: str, *, top_level: bool = False) -> list[tuple[int, int]]:
    out = []
    for line in text.splitlines():
        if top_level and line.startswith(" "):
            continue
        if line.rstrip().endswith(f": {name}"):
            a, b = line.split(":")[0].strip().split("-")
            out.append((int(a, 16), int(b, 16)))
    return out


_T0 = time.monotonic()


def trace(msg: str) -> None:
    """Progress on stderr when KDUMPD_E2E_TRACE is set."""
    line = f"[{time.monotonic() - _T0:8.2f}] {msg}"
    if os.environ.get("KDUMPD_E2E_TRACE"):
        print(line, file=sys.stderr, flush=True)


def cpu_hotplug_mode(kernel_key: str) -> str:
    """How CPUs are "hot-added" on this kernel (see Guest)."""
    env = os.environ.get("KDUMPD_E2E_CPU_HOTPLUG")
    if env:
        return env
    return "logical" if kernel_key.startswith("6.12") else "acpi"


def shquote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def parse_cpulist(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-")
            cpus.extend(range(int(a), int(b) + 1))
        else:
            cpus.append(int(part))
    return cpus
