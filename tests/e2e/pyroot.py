"""A ppc64el root with Python and the project's dependencies, for the ppc64le guests.

The x86_64 guests share the host's own root; a ppc64le guest cannot run it.  This
root is built once under the e2e cache from two public sources only:

- Debian's archive, through the private ppc64el apt configuration of kernels.py
  (``APT::Architecture "ppc64el"``; the machine's apt setup is never used):
  ``python3`` (3.11 in bookworm) with its dependencies, the C extensions the project
  needs as Debian built them (``python3-libfdt``, ``python3-systemd``), ``kexec-tools``,
  ``busybox-static`` and ``dbus-daemon``.  ``apt-get install --download-only`` with an
  empty dpkg status resolves the whole dependency closure; each package is unpacked
  with ``dpkg-deb -x`` (nothing is configured or run).
- PyPI, through ``pip download`` for ``manylinux2014_ppc64le`` / cp311: the project's
  pure-Python dependencies (pydantic, pydantic-settings, pyudev, pyelftools and
  theirs) and pydantic-core's ppc64le wheel.  dbus-fast has no ppc64le wheel of the
  versions the project needs; its wheels carry the Python sources next to the
  compiled modules, and dbus-fast runs from those when the compiled ones are absent,
  so the sources of its wheel (the compiled ``.so`` files dropped) are used.
  The wheels are unpacked into ``/usr/local/lib/python3.11/dist-packages``, which
  Debian's interpreter searches.

- Debian's *source* package of kexec-tools from trixie (2.0.29: ``--hotplug``, which
  6.12 needs to keep a ``kexec_load`` image current in place), built here with the
  ppc64el cross compiler against bookworm's glibc (``tests/e2e/kexectools.py``) and
  put over the root's ``/sbin/kexec``.  Trixie's binary package needs trixie's glibc
  (its ``__isoc23_*`` symbols), and a mirror that lists trixie need not serve every
  ppc64el file of it; the source builds in seconds.  ``KDUMPD_E2E_PPC64LE_KEXEC=debian``
  keeps the suite's own binary (2.0.25 in bookworm).

The checkout itself is not copied: the guest mounts it at ``/src`` and runs
``python3 -m kdumpd.cli`` with ``PYTHONPATH=/src``.  ``KDUMPD_E2E_PPC64LE_SUITE``
picks the Debian suite for the root (default ``bookworm``; ``trixie`` has
kexec-tools 2.0.29 with ``--hotplug`` and Python 3.13).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.e2e import kexectools
from tests.e2e.kernels import CACHE, KernelUnavailable, apt_opts, private_apt_update, run_tool

REPO = Path(__file__).resolve().parents[2]
SUITE = os.environ.get("KDUMPD_E2E_PPC64LE_SUITE", "bookworm")
# "source": kexec-tools built from Debian's trixie source (tests/e2e/kexectools.py);
# "debian": the root suite's own binary package
KEXEC = os.environ.get("KDUMPD_E2E_PPC64LE_KEXEC", "source")
DEBS = (
    "python3",
    "python3-libfdt",
    "python3-systemd",
    "kexec-tools",
    "busybox-static",
    "dbus-daemon",
    "libudev1",  # pyudev loads it with ctypes
    "libc-bin",  # ldconfig: ctypes.util.find_library (pyudev) asks ``ldconfig -p``
)
# Provided by the Debian packages above (C extensions), not by PyPI.
FROM_DEBIAN = ("systemd-python", "pylibfdt")
PLATFORMS = ("manylinux2014_ppc64le", "manylinux_2_17_ppc64le", "manylinux_2_28_ppc64le")
PY_VERSION = {"bookworm": "3.11", "trixie": "3.13"}
APPLETS = (
    "sh", "cat", "echo", "kill", "ls", "mkdir", "sleep", "od", "dd", "tr", "head", "tail",
    "grep", "sed", "awk", "find", "stat", "taskset", "env", "rm", "cp", "true", "false",
)  # fmt: skip
MOUNT_POINTS = ("proc", "sys", "dev", "tmp", "run", "mnt", "src", "cache", "var/tmp")


def _requirements() -> list[str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if not d.startswith(FROM_DEBIAN)]


def _digest() -> str:
    kexec = kexectools.SOURCE_SUITE if KEXEC == "source" else KEXEC
    key = repr((SUITE, DEBS, _requirements(), APPLETS, MOUNT_POINTS, kexec, 2))
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _debs(dest: Path) -> list[Path]:
    archives = CACHE / f"pyroot-debs-{SUITE}"
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    private_apt_update("ppc64le")
    run_tool(
        [
            "apt-get", "-q", "-y", *apt_opts("ppc64le"),
            "-o", f"Dir::Cache::archives={archives}",
            "-t", SUITE, "--no-install-recommends", "install", "--download-only", *DEBS,
        ],
        f"apt-get download of the ppc64el {SUITE} root",
    )  # fmt: skip
    debs = sorted(archives.glob("*.deb"))
    if not debs:
        raise KernelUnavailable(f"no ppc64el .deb downloaded into {archives}")
    for deb in debs:
        run_tool(["dpkg-deb", "-x", str(deb), str(dest)], f"dpkg-deb -x {deb.name}")
    return debs


def _wheels(site: Path) -> None:
    version = PY_VERSION.get(SUITE, "3.11")
    wheels = CACHE / f"wheels-ppc64le-cp{version.replace('.', '')}"
    wheels.mkdir(parents=True, exist_ok=True)
    plat: list[str] = []
    for p in PLATFORMS:
        plat += ["--platform", p]
    reqs = _requirements()
    pure = [r for r in reqs if not r.startswith("dbus-fast")]
    pip = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check"]
    common = ["--only-binary=:all:", "--python-version", version, "--implementation", "cp"]
    run_tool([*pip, "-d", str(wheels), *common, *plat, *pure], "pip download (ppc64le wheels)")
    dbus = [r for r in reqs if r.startswith("dbus-fast")]
    x86 = ["--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]
    anyw = wheels / "dbus-fast-any"
    run_tool([*pip, "--no-deps", "-d", str(anyw), *common, *x86, *dbus], "pip download dbus-fast")
    for whl in [*sorted(wheels.glob("*.whl")), *sorted(anyw.glob("*.whl"))]:
        with zipfile.ZipFile(whl) as z:
            for name in z.namelist():
                if whl.parent == anyw and name.endswith(".so"):
                    continue  # x86_64 builds: the .py next to each one is used instead
                z.extract(name, site)


def _compile(root: Path, pyver: str) -> None:
    host = f"/usr/bin/python{pyver}"
    if not Path(host).exists():
        return  # slower guest starts, same results
    dirs = [
        root / "usr" / "lib" / f"python{pyver}",
        root / "usr" / "lib" / "python3" / "dist-packages",
        root / "usr" / "local" / "lib" / f"python{pyver}" / "dist-packages",
    ]
    subprocess.run(
        [host, "-m", "compileall", "-q", "-j", "0", *(str(d) for d in dirs if d.is_dir())],
        capture_output=True,
        check=False,
    )


def compile_checkout() -> None:
    """Byte-compile the checkout's kdumpd for the guest's Python (same version as the
    host's; the checkout is read-only in the guest)."""
    pyver = PY_VERSION.get(SUITE, "3.11")
    host = f"/usr/bin/python{pyver}"
    if Path(host).exists():
        subprocess.run(
            [host, "-m", "compileall", "-q", str(REPO / "kdumpd"), str(REPO / "tests" / "e2e")],
            capture_output=True,
            check=False,
        )


def build() -> Path:
    """Build (once) and return the ppc64el root."""
    dest = CACHE / f"pyroot-ppc64el-{SUITE}-{_digest()}"
    if (dest / ".complete").exists():
        return dest
    part = dest.with_name(dest.name + ".part")
    if part.exists():
        shutil.rmtree(part)
    part.mkdir(parents=True)
    _debs(part)
    if KEXEC == "source":
        kexectools.install(part)
    pyver = PY_VERSION.get(SUITE, "3.11")
    site = part / "usr" / "local" / "lib" / f"python{pyver}" / "dist-packages"
    site.mkdir(parents=True, exist_ok=True)
    _wheels(site)
    for d in MOUNT_POINTS:
        (part / d).mkdir(parents=True, exist_ok=True)
    bindir = part / "bin"
    if bindir.is_symlink():  # merged /usr (trixie): bin -> usr/bin
        bindir = part / "usr" / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for applet in APPLETS:
        link = bindir / applet
        if not link.exists() and not link.is_symlink():
            link.symlink_to("busybox")
    (part / "etc").mkdir(exist_ok=True)
    # The root is read-only in the guest: its /init builds the linker cache in /run
    # (``ldconfig -C /run/ld.so.cache``), which /etc/ld.so.cache points to.
    cache = part / "etc" / "ld.so.cache"
    if cache.exists() or cache.is_symlink():
        cache.unlink()
    cache.symlink_to("/run/ld.so.cache")
    (part / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (part / "etc" / "group").write_text("root:x:0:\n")
    # Nothing ran Debian's postinst (py3compile): compile the interpreter's library and
    # the wheels here, or every guest start compiles them again (the root is read-only
    # in the guest), ~20 s per Python start under TCG.  The host's python3 must be the
    # same version as the root's for the .pyc files to be used.
    _compile(part, pyver)
    (part / ".complete").write_text(_digest() + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    part.rename(dest)
    return dest


if __name__ == "__main__":
    print(build())
