"""Fetch and unpack Debian kernels for the e2e guests.

6.1 comes from bookworm, 6.12 from bookworm-backports.  Backports are only ever
added to a *private* apt configuration under the cache directory; the machine's
own sources are never touched.  Packages are fetched with ``apt-get download`` and
unpacked with ``dpkg-deb -x`` (no install).

Two architectures: ``x86_64`` (Debian amd64, ``linux-image-*-amd64-unsigned``) and
``ppc64le`` (Debian ppc64el, ``linux-image-*-powerpc64le``).  Each has its own
private apt directory; the ppc64el one sets ``APT::Architecture "ppc64el"`` (no
``dpkg --add-architecture`` on the machine) and also lists ``trixie`` for the guest's
user space (tests/e2e/pyroot.py).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("KDUMPD_E2E_CACHE", Path.home() / ".cache" / "kdumpd" / "e2e"))
MIRROR = os.environ.get("KDUMPD_E2E_MIRROR", "http://deb.debian.org/debian")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

# version key -> (suite list for the private apt config, package-name regex)
KNOWN: dict[str, tuple[str, str]] = {
    "6.1": ("bookworm", r"^linux-image-6\.1\.0-\d+-amd64-unsigned$"),
    "6.12": ("bookworm-backports", r"^linux-image-6\.12\.[^ ]*-amd64-unsigned$"),
}
KNOWN_PPC64LE: dict[str, tuple[str, str]] = {
    "6.1": ("bookworm", r"^linux-image-6\.1\.0-\d+-powerpc64le$"),
    "6.12": ("bookworm-backports", r"^linux-image-6\.12\.[^ ]*\+deb12-powerpc64le$"),
}
ARCHES = ("x86_64", "ppc64le")
# Debian's name of each architecture, the suites of its private apt configuration
DEB_ARCH = {"x86_64": "amd64", "ppc64le": "ppc64el"}
SUITES = {
    "x86_64": ("bookworm", "bookworm-backports"),
    "ppc64le": ("bookworm", "bookworm-backports", "trixie"),
}


def known(arch: str = "x86_64") -> dict[str, tuple[str, str]]:
    return KNOWN_PPC64LE if arch == "ppc64le" else KNOWN


class KernelUnavailable(RuntimeError):
    """The kernel package cannot be resolved or downloaded (reason in str())."""


@dataclass(frozen=True)
class Kernel:
    key: str  # "6.1", "6.12" or a path given by the user
    release: str  # uname -r, e.g. 6.1.0-56-amd64
    vmlinuz: Path  # the boot image: vmlinuz (x86_64) or vmlinux (ppc64le, an ELF)
    root: Path  # unpacked package root (lib/modules/<release>/...)
    arch: str = "x86_64"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release


def _apt_dir(arch: str = "x86_64") -> Path:
    return CACHE / ("apt" if arch == "x86_64" else f"apt-{DEB_ARCH[arch]}")


def apt_opts(arch: str = "x86_64") -> list[str]:
    """apt-get/apt-cache options of the private configuration for ``arch``."""
    return _apt_opts(arch)


def run_tool(argv: list[str], what: str, cwd: Path | None = None) -> str:
    """Run a host tool of the e2e set-up; its stdout, or :class:`KernelUnavailable`
    with one line: the exit status and the tool's last message line."""
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        lines = [ln.strip() for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
        last = lines[-1][-300:] if lines else "no message"
        raise KernelUnavailable(f"{what} failed (exit {r.returncode}): {last}")
    return r.stdout


def apt_dir_opts(d: Path) -> list[str]:
    """apt options for a private configuration kept in directory ``d`` (its own
    sources.list, lists, dpkg status and cache; nothing of the machine's)."""
    return [
        "-o", f"Dir::Etc::sourcelist={d / 'sources.list'}",
        "-o", "Dir::Etc::sourceparts=-",
        "-o", f"Dir::State::Lists={d / 'lists'}",
        "-o", f"Dir::State::status={d / 'status'}",
        "-o", f"Dir::Cache={d / 'cache'}",
        "-o", "Debug::NoLocking=1",
        "-o", "APT::Get::List-Cleanup=0",
    ]  # fmt: skip


def _apt_opts(arch: str = "x86_64") -> list[str]:
    d = _apt_dir(arch)
    extra = (
        []
        if arch == "x86_64"
        else [
            "-o",
            f"APT::Architecture={DEB_ARCH[arch]}",
            "-o",
            f"APT::Architectures={DEB_ARCH[arch]}",
        ]
    )
    return [*extra, *apt_dir_opts(d)]


def private_apt_update(arch: str = "x86_64") -> None:
    """Write the private apt configuration for ``arch`` and update its lists once."""
    _private_apt_update(arch)


def _private_apt_update(arch: str = "x86_64") -> None:
    d = _apt_dir(arch)
    (d / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (d / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    only = "" if arch == "x86_64" else f"arch={DEB_ARCH[arch]} "
    sources = "".join(
        f"deb [{only}signed-by={KEYRING}] {MIRROR} {suite} main\n" for suite in SUITES[arch]
    )
    (d / "sources.list").write_text(sources)
    status = d / "status"
    if not status.exists():
        status.write_text("")
    stamp = d / "updated"
    if stamp.exists():
        return
    r = subprocess.run(
        ["apt-get", "-q", *_apt_opts(arch), "update"], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        raise KernelUnavailable(f"private apt-get update failed: {r.stderr.strip()[-400:]}")
    stamp.write_text("ok\n")


def resolve_package(key: str, arch: str = "x86_64") -> str:
    """The current package name for a known kernel key, from the private apt lists."""
    table = known(arch)
    if key not in table:
        raise KernelUnavailable(f"unknown kernel {key!r} (known: {', '.join(table)}; or a path)")
    suite, pattern = table[key]
    _private_apt_update(arch)
    flavour = "amd64-unsigned" if arch == "x86_64" else "powerpc64le"
    r = subprocess.run(
        ["apt-cache", *_apt_opts(arch), "search", "--names-only", f"^linux-image-.*-{flavour}$"],
        capture_output=True,
        text=True,
        check=False,
    )
    names = sorted(
        {
            n
            for n in (line.split(" ", 1)[0] for line in r.stdout.splitlines())
            if re.match(pattern, n)
        }
    )
    if not names:
        raise KernelUnavailable(f"no package matching {pattern} in {suite}")

    def abi(n: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", n))

    return max(names, key=abi)


def fetch(key: str, arch: str = "x86_64") -> Kernel:
    """Download (once) and unpack a Debian kernel; return where it is."""
    p = Path(key)
    if p.exists():
        return from_path(p, arch)
    pkg = resolve_package(key, arch)
    dest = CACHE / "kernels" / pkg
    done = dest / ".unpacked"
    if not done.exists():
        debdir = CACHE / "debs"
        debdir.mkdir(parents=True, exist_ok=True)
        debs = list(debdir.glob(f"{pkg}_*.deb"))
        if not debs:
            r = subprocess.run(
                ["apt-get", "-q", *_apt_opts(arch), "download", pkg],
                cwd=debdir,
                capture_output=True,
                text=True,
                check=False,
            )
            if r.returncode != 0:
                raise KernelUnavailable(f"apt-get download {pkg} failed: {r.stderr.strip()[-400:]}")
            debs = list(debdir.glob(f"{pkg}_*.deb"))
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(dest)], check=True)
        done.write_text(pkg + "\n")
    return _from_root(key, dest, arch)


def _from_root(key: str, root: Path, arch: str = "x86_64") -> Kernel:
    name = "vmlinuz" if arch == "x86_64" else "vmlinux"
    vmlinuz = sorted((root / "boot").glob(f"{name}-*"))
    if not vmlinuz:
        raise KernelUnavailable(f"no boot/{name}-* under {root}")
    release = vmlinuz[-1].name.removeprefix(f"{name}-")
    kern = Kernel(key=key, release=release, vmlinuz=vmlinuz[-1], root=root, arch=arch)
    if kern.modules.is_dir() and not (kern.modules / "modules.dep").exists():
        # The package does not ship modules.dep (the postinst runs depmod).
        subprocess.run(["depmod", "-b", str(root), release], check=True)
    return kern


def from_path(path: Path, arch: str = "x86_64") -> Kernel:
    """A kernel given by path: either an unpacked package root or a .deb file."""
    if path.suffix == ".deb":
        dest = CACHE / "kernels" / path.stem
        if not (dest / ".unpacked").exists():
            dest.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(path), str(dest)], check=True)
            (dest / ".unpacked").write_text(path.name + "\n")
        return _from_root(str(path), dest, arch)
    return _from_root(str(path), path, arch)


if __name__ == "__main__":
    import sys

    arch = os.environ.get("KDUMPD_E2E_ARCH", "x86_64")
    for k in sys.argv[1:] or list(known(arch)):
        kern = fetch(k, arch)
        print(k, kern.release, kern.vmlinuz)
