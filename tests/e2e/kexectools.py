"""kexec-tools for the ppc64el guest root, built from Debian's source package.

The 6.12 in-place rows need ``kexec -p --hotplug`` (kexec-tools >= 2.0.29: it loads
with ``KEXEC_CRASH_HOTPLUG_SUPPORT`` and leaves room in the crash FDT), which bookworm
does not have.  Trixie's binary package is linked against trixie's glibc (it needs
``__isoc23_strtoul`` and friends, GLIBC_2.38), while the guest root is bookworm's.  So
this module takes trixie's *source* package and builds it for bookworm's glibc:

- ``apt-get source --download-only`` through a private apt configuration under the
  e2e cache that lists only ``deb-src … trixie main`` (the machine's apt setup is not
  used), then ``dpkg-source -x`` (which applies Debian's patches);
- ``./configure --host=powerpc64le-linux-gnu`` without zlib/lzma/xen and ``make``
  with the cross compiler from ``gcc-powerpc64le-linux-gnu`` and
  ``libc6-dev-ppc64el-cross`` (both bookworm packages, in the Makefile's
  ``APT_PACKAGES``); a few seconds on two cores;
- the result is cached per source version under ``$CACHE/kexec-tools-<version>``.

Nothing from kexec-tools enters the project: it is the loader the ``kexec-tools``
back-end drives in the guest, as a distribution would ship it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tests.e2e.kernels import CACHE, KEYRING, MIRROR, KernelUnavailable, apt_dir_opts, run_tool

SOURCE_SUITE = "trixie"
CROSS = "powerpc64le-linux-gnu"
TOOLS = ("kexec", "vmcore-dmesg")


def _apt_dir() -> Path:
    return CACHE / f"apt-src-{SOURCE_SUITE}"


def _apt_opts() -> list[str]:
    return apt_dir_opts(_apt_dir())


def _source() -> Path:
    """Download and unpack the source package once; return the unpacked tree."""
    d = _apt_dir()
    (d / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (d / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (d / "sources.list").write_text(f"deb-src [signed-by={KEYRING}] {MIRROR} {SOURCE_SUITE} main\n")
    if not (d / "status").exists():
        (d / "status").write_text("")
    if not (d / "updated").exists():
        run_tool(
            ["apt-get", "-q", *_apt_opts(), "update"], f"apt-get update ({SOURCE_SUITE} sources)"
        )
        (d / "updated").write_text("ok\n")
    dl = d / "source"
    dl.mkdir(exist_ok=True)
    if not list(dl.glob("kexec-tools_*.dsc")):
        run_tool(
            ["apt-get", "-q", *_apt_opts(), "source", "--download-only", "kexec-tools"],
            f"apt-get source kexec-tools ({SOURCE_SUITE})",
            cwd=dl,
        )
    dscs = sorted(dl.glob("kexec-tools_*.dsc"))
    if not dscs:
        raise KernelUnavailable(f"no kexec-tools .dsc downloaded into {dl}")
    version = re.sub(r"^kexec-tools_|\.dsc$", "", dscs[-1].name)
    tree = CACHE / f"kexec-tools-{version}" / "src"
    if not (tree / "configure").exists():
        if tree.exists():
            shutil.rmtree(tree)
        tree.parent.mkdir(parents=True, exist_ok=True)
        run_tool(["dpkg-source", "-x", str(dscs[-1]), str(tree)], f"dpkg-source -x {dscs[-1].name}")
    return tree


def build() -> Path:
    """Build (once) and return the directory holding the ppc64el ``kexec``."""
    if shutil.which(f"{CROSS}-gcc") is None:
        raise KernelUnavailable(
            f"{CROSS}-gcc not found: install gcc-powerpc64le-linux-gnu and "
            "libc6-dev-ppc64el-cross (make apt) to build kexec-tools for the ppc64el guest"
        )
    if shutil.which("dpkg-source") is None:
        raise KernelUnavailable("dpkg-source not found: install dpkg-dev (make apt)")
    tree = _source()
    out = tree / "build" / "sbin"
    if all((out / t).exists() for t in TOOLS) and (tree / ".built").exists():
        return out
    run_tool(
        ["./configure", "-q", f"--host={CROSS}", "--without-zlib", "--without-lzma",
         "--without-xen"],
        "configure kexec-tools for ppc64el",
        cwd=tree,
    )  # fmt: skip
    run_tool(["make", "-j2"], "make kexec-tools (ppc64el)", cwd=tree)
    for t in TOOLS:
        if not (out / t).exists():
            raise KernelUnavailable(f"kexec-tools build left no {out / t}")
    (tree / ".built").write_text("ok\n")
    return out


def install(root: Path) -> None:
    """Put the built tools over the root's own (``/sbin`` in bookworm)."""
    out = build()
    sbin = root / "sbin"
    if sbin.is_symlink():  # merged /usr
        sbin = root / "usr" / "sbin"
    sbin.mkdir(parents=True, exist_ok=True)
    for t in TOOLS:
        dest = sbin / t
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        shutil.copy2(out / t, dest)
        dest.chmod(0o755)
