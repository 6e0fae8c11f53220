"""Fetch and unpack Debian kernels for the e2e guests.

6.1 comes from bookworm, 6.12 from bookworm-backports.  Backports are only ever
added to a *private* apt configuration under the cache directory; the machine's
own sources are never touched.  Packages are fetched with ``apt-get download`` and
unpacked with ``dpkg-deb -x`` (no install).
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


class KernelUnavailable(RuntimeError):
    """The kernel package cannot be resolved or downloaded (reason in str())."""


@dataclass(frozen=True)
class Kernel:
    key: str  # "6.1", "6.12" or a path given by the user
    release: str  # uname -r, e.g. 6.1.0-56-amd64
    vmlinuz: Path
    root: Path  # unpacked package root (lib/modules/<release>/...)

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release


def _apt_dir() -> Path:
    return CACHE / "apt"


def _apt_opts() -> list[str]:
    d = _apt_dir()
    return [
        "-o", f"Dir::Etc::sourcelist={d / 'sources.list'}",
        "-o", "Dir::Etc::sourceparts=-",
        "-o", f"Dir::State::Lists={d / 'lists'}",
        "-o", f"Dir::State::status={d / 'status'}",
        "-o", f"Dir::Cache={d / 'cache'}",
        "-o", "Debug::NoLocking=1",
        "-o", "APT::Get::List-Cleanup=0",
    ]  # fmt: skip


def _private_apt_update() -> None:
    d = _apt_dir()
    (d / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (d / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = "".join(
        f"deb [signed-by={KEYRING}] {MIRROR} {suite} main\n"
        for suite in ("bookworm", "bookworm-backports")
    )
    (d / "sources.list").write_text(sources)
    status = d / "status"
    if not status.exists():
        status.write_text("")
    stamp = d / "updated"
    if stamp.exists():
        return
    r = subprocess.run(
        ["apt-get", "-q", *_apt_opts(), "update"], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        raise KernelUnavailable(f"private apt-get update failed: {r.stderr.strip()[-400:]}")
    stamp.write_text("ok\n")


def resolve_package(key: str) -> str:
    """The current package name for a known kernel key, from the private apt lists."""
    if key not in KNOWN:
        raise KernelUnavailable(f"unknown kernel {key!r} (known: {', '.join(KNOWN)}; or a path)")
    suite, pattern = KNOWN[key]
    _private_apt_update()
    r = subprocess.run(
        ["apt-cache", *_apt_opts(), "search", "--names-only", "^linux-image-.*-amd64-unsigned$"],
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


def fetch(key: str) -> Kernel:
    """Download (once) and unpack a Debian kernel; return where it is."""
    p = Path(key)
    if p.exists():
        return from_path(p)
    pkg = resolve_package(key)
    dest = CACHE / "kernels" / pkg
    done = dest / ".unpacked"
    if not done.exists():
        debdir = CACHE / "debs"
        debdir.mkdir(parents=True, exist_ok=True)
        debs = list(debdir.glob(f"{pkg}_*.deb"))
        if not debs:
            r = subprocess.run(
                ["apt-get", "-q", *_apt_opts(), "download", pkg],
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
    return _from_root(key, dest)


def _from_root(key: str, root: Path) -> Kernel:
    vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise KernelUnavailable(f"no boot/vmlinuz-* under {root}")
    release = vmlinuz[-1].name.removeprefix("vmlinuz-")
    kern = Kernel(key=key, release=release, vmlinuz=vmlinuz[-1], root=root)
    if kern.modules.is_dir() and not (kern.modules / "modules.dep").exists():
        # The package does not ship modules.dep (the postinst runs depmod).
        subprocess.run(["depmod", "-b", str(root), release], check=True)
    return kern


def from_path(path: Path) -> Kernel:
    """A kernel given by path: either an unpacked package root or a .deb file."""
    if path.suffix == ".deb":
        dest = CACHE / "kernels" / path.stem
        if not (dest / ".unpacked").exists():
            dest.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(path), str(dest)], check=True)
            (dest / ".unpacked").write_text(path.name + "\n")
        return _from_root(str(path), dest)
    return _from_root(str(path), path)


if __name__ == "__main__":
    import sys

    for k in sys.argv[1:] or list(KNOWN):
        kern = fetch(k)
        print(k, kern.release, kern.vmlinuz)
