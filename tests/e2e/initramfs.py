"""Build the guest initramfs: busybox-static, the modules the guest needs (9p over
virtio), readelf for the capture side, and one ``/init`` that serves both roles.

First kernel: mounts devtmpfs/proc/sys, loads the modules, mounts the host root
read-only over 9p at ``/host`` (plus a writable ``/out`` share), prepares the
mounts a ``chroot /host`` needs, then serves commands from ``/dev/ttyS1``.

Capture kernel (``/proc/vmcore`` exists): prints the vmcore size and readelf's
notes and program headers between ``@@VMCORE-BEGIN`` / ``@@VMCORE-END`` on the
console and powers off.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.e2e.kernels import CACHE, Kernel

# Root modules; dependencies come from modules.dep.  Built-ins are skipped.
MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
# ppc64le: the command channel is a virtio-serial port (/dev/vport*p1): a second
# spapr-vty (hvc1) is polled by the hvc driver with a back-off of up to 2 s per read.
MODULES_PPC64LE = ("virtio_pci", "virtio_console", "9pnet_virtio", "9p")
TOOLS = ("/usr/bin/readelf",)

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /dev /proc /sys /host /out /tmp
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
exec </dev/null >/dev/ttyS0 2>&1
echo "@@INIT $(cat /proc/sys/kernel/osrelease)"
while read -r m; do
  insmod "$m" 2>/dev/null || echo "insmod $m failed"
done < /modules.order

if [ -e /proc/vmcore ]; then
  echo "@@VMCORE-BEGIN"
  echo "size $(stat -c %s /proc/vmcore)"
  echo "cmdline $(cat /proc/cmdline)"
  readelf -W -l /proc/vmcore 2>&1 | grep -E '^  (LOAD|NOTE) |program headers|readelf'
  set -- $(readelf -W -l /proc/vmcore | awk '$1=="NOTE" {print $2, $5; exit}')
  if [ -n "${1:-}" ]; then
    off=$(($1)); sz=$(($2))
    echo "notes $off $sz"
    printf 'noteshex '
    n=$(((off % 4096 + sz + 4095) / 4096))
    dd if=/proc/vmcore bs=4096 skip=$((off / 4096)) count=$n 2>/dev/null \
      | od -An -v -tx1 | tr -d ' \n'
    echo
  fi
  echo "@@VMCORE-END"
  sync
  poweroff -f
fi

o=trans=virtio,version=9p2000.L
mount -t 9p -o $o,ro,cache=loose hostroot /host || echo "@@ERROR 9p hostroot"
mount -t 9p -o $o,rw out /out || echo "@@ERROR 9p out"
for d in proc sys dev; do mount --bind /$d /host/$d; done
mkdir -p /hostorig
mount --bind /host /hostorig
mount -t tmpfs tmp /host/tmp
mount -t tmpfs run /host/run
mkdir -p /host/run/kdumpd /host/run/lock
mount -t tmpfs varlib /host/var/tmp
# Host paths the guest needs (the checkout, the kernel cache) that the tmpfs mounts
# above would hide, e.g. a CI checkout under /tmp: e2e.keep=/a:/b on the cmdline.
for w in $(cat /proc/cmdline); do
  case "$w" in e2e.keep=*)
    for p in $(echo "${w#e2e.keep=}" | tr ':' ' '); do
      case "$p" in /tmp/*|/run/*|/var/tmp/*)
        mkdir -p "/host$p" && mount --bind "/hostorig$p" "/host$p" \
          || echo "@@ERROR keep $p";;
      esac
    done;;
  esac
done
mount --bind /out /host/mnt 2>/dev/null || echo "@@ERROR bind /out"
echo "@@READY"
stty -F /dev/ttyS1 raw -echo
exec 3>/dev/ttyS1
while read -r id cmd; do
  [ -n "$id" ] || continue
  if [ "$id" = "!" ]; then
    sh -c "$cmd" </dev/null >/dev/null 2>&1 &
    continue
  fi
  out=$(sh -c "$cmd" 2>&1 </dev/null)
  rc=$?
  printf '@@BEGIN %s\n%s\n@@END %s %s\n' "$id" "$out" "$id" "$rc" >&3
done < /dev/ttyS1
echo "@@CMDCHANNEL-CLOSED"
sleep 100000
"""


# ppc64le (pseries): console hvc0, command channel a virtio-serial port, the guest's root is the
# ppc64el root of pyroot.py (plus the checkout at /src and the e2e cache at /cache).
# The capture side prints the first 80 KiB of /proc/vmcore as hex (the ELF header,
# program headers and notes, which start at 64 KiB with 64 KiB pages; the host parses
# them, no readelf in the guest) and the
# CPU nodes of the device tree the capture kernel booted with: that is the crash
# FDT the first kernel's loader built.
INIT_PPC64LE = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /dev /proc /sys /host /out /tmp
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
exec </dev/null >/dev/hvc0 2>&1
echo "@@INIT $(cat /proc/sys/kernel/osrelease)"

dtcpus() {
  for d in /proc/device-tree/cpus/*; do
    [ -d "$d" ] || continue
    [ -e "$d/reg" ] || continue
    reg=$(od -An -v -tx1 "$d/reg" | tr -d ' \n')
    srv=$(od -An -v -tx1 "$d/ibm,ppc-interrupt-server#s" 2>/dev/null | tr -d ' \n')
    st=$(tr -d '\000' < "$d/status" 2>/dev/null)
    echo "dtcpu $(basename "$d") reg=$reg servers=$srv status=${st:-none}"
  done
}

if [ -e /proc/vmcore ]; then
  echo "@@VMCORE-BEGIN"
  echo "size $(stat -c %s /proc/vmcore)"
  echo "cmdline $(cat /proc/cmdline)"
  printf 'headhex '
  dd if=/proc/vmcore bs=4096 count=20 2>/dev/null | od -An -v -tx1 | tr -d ' \n'
  echo
  dtcpus
  echo "@@VMCORE-END"
  sync
  poweroff -f
fi

while read -r m; do
  insmod "$m" 2>/dev/null || echo "insmod $m failed"
done < /modules.order
o=trans=virtio,version=9p2000.L
mount -t 9p -o $o,ro,cache=loose pyroot /host || echo "@@ERROR 9p pyroot"
mount -t 9p -o $o,ro,cache=loose src /host/src || echo "@@ERROR 9p src"
mount -t 9p -o $o,ro,cache=loose cache /host/cache || echo "@@ERROR 9p cache"
mount -t 9p -o $o,rw out /out || echo "@@ERROR 9p out"
for d in proc sys dev; do mount --bind /$d /host/$d; done
mount -t tmpfs tmp /host/tmp
mount -t tmpfs run /host/run
mkdir -p /host/run/kdumpd /host/run/lock
mount -t tmpfs vartmp /host/var/tmp
mount --bind /out /host/mnt || echo "@@ERROR bind /out"
chroot /host /sbin/ldconfig -C /run/ld.so.cache || echo "@@ERROR ldconfig"
dtcpus > /out/dtcpus-boot
echo "@@READY"
port=$(ls /dev/vport*p1 2>/dev/null | head -1)
[ -n "$port" ] || echo "@@ERROR no virtio-serial port"
exec 3<>"$port"  # a virtio port opens once: one descriptor for both directions
# A read gives end-of-file while the host side of the port is not connected: retry.
while :; do
while read -r id cmd <&3; do
  [ -n "$id" ] || continue
  if [ "$id" = "!" ]; then
    sh -c "$cmd" </dev/null >/dev/null 2>&1 &
    continue
  fi
  out=$(sh -c "$cmd" 2>&1 </dev/null)
  rc=$?
  printf '@@BEGIN %s\n%s\n@@END %s %s\n' "$id" "$out" "$id" "$rc" >&3
done
sleep 0.2
done
echo "@@CMDCHANNEL-CLOSED"
sleep 100000
"""


def _module_order(kernel: Kernel, roots: tuple[str, ...]) -> list[str]:
    """Module paths (relative to lib/modules/<rel>) in load order."""
    dep: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (kernel.modules / "modules.dep").read_text().splitlines():
        mod, _, deps = line.partition(":")
        dep[mod] = deps.split()
        name = Path(mod).name.split(".ko")[0].replace("-", "_")
        by_name[name] = mod
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for d in dep.get(mod, []):
            visit(d)
        order.append(mod)

    for r in roots:
        if r.replace("-", "_") in by_name:
            visit(by_name[r.replace("-", "_")])
    return order


def _libs(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs.append(parts[2])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def build(kernel: Kernel, dest: Path | None = None, pyroot: Path | None = None) -> Path:
    """Build (or reuse) the initramfs for ``kernel``; returns its path.  ppc64le takes
    busybox from ``pyroot`` (the ppc64el root) and needs no other tool."""
    ppc = kernel.arch == "ppc64le"
    init = INIT_PPC64LE if ppc else INIT
    tools = () if ppc else TOOLS
    modules = MODULES_PPC64LE if ppc else MODULES
    if ppc and pyroot is None:
        raise ValueError("a ppc64le initramfs needs the ppc64el root (busybox)")
    busybox = pyroot / "bin" / "busybox" if ppc and pyroot else Path("/usr/bin/busybox")
    digest = hashlib.sha256((init + repr(modules) + repr(tools)).encode()).hexdigest()[:12]
    dest = dest or CACHE / "initramfs" / f"{kernel.release}-{digest}.cpio.gz"
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kdumpd-initramfs-") as tmp:
        root = Path(tmp)
        for d in ("bin", "sbin", "dev", "proc", "sys", "host", "out", "tmp", "lib64", "etc"):
            (root / d).mkdir()
        shutil.copy2(busybox, root / "bin" / "busybox")
        for tool in tools:
            shutil.copy2(tool, root / "bin" / Path(tool).name)
            for lib in _libs(tool):
                target = root / lib.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(os.path.realpath(lib), target)
        moddir = root / "lib" / "modules"
        moddir.mkdir(parents=True, exist_ok=True)
        order = []
        for rel in _module_order(kernel, modules):
            src = kernel.modules / rel
            name = Path(rel).name
            if name.endswith(".xz"):
                data = lzma.decompress(src.read_bytes())
                name = name.removesuffix(".xz")
            else:
                data = src.read_bytes()
            (moddir / name).write_bytes(data)
            order.append(f"/lib/modules/{name}")
        (root / "modules.order").write_text("".join(o + "\n" for o in order))
        init_path = root / "init"
        init_path.write_text(init)
        init_path.chmod(0o755)
        files = subprocess.run(
            ["find", ".", "-mindepth", "1"], cwd=root, capture_output=True, check=True
        ).stdout
        cpio = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            cwd=root,
            input=files,
            capture_output=True,
            check=True,
        ).stdout
        part = dest.with_suffix(".part")
        part.write_bytes(
            subprocess.run(["gzip", "-1"], input=cpio, capture_output=True, check=True).stdout
        )
        part.rename(dest)
    return dest


if __name__ == "__main__":
    import sys

    from tests.e2e import kernels

    for k in sys.argv[1:] or list(kernels.KNOWN):
        print(build(kernels.fetch(k)))
