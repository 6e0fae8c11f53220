"""Build hook: ``pip install .`` compiles the x86_64 purgatory and ships it in the package.

Everything else about the package is in pyproject.toml.  The purgatory is native code
(purgatory/x86_64, docs/purgatory.md); its own Makefile builds it, and the blob is
copied to ``kdumpd/arch/x86_64/purgatory.bin`` inside the build tree, where
``kdumpd.arch.x86_64.purgatory.purgatory_blob()`` looks first.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SOURCE = ROOT / "purgatory" / "x86_64"
PACKAGE_PATH = Path("kdumpd") / "arch" / "x86_64" / "purgatory.bin"


class BuildPyWithPurgatory(build_py):
    """``build_py`` plus the native purgatory build."""

    def run(self) -> None:
        super().run()
        blob = build_purgatory(ROOT / "build" / "purgatory" / "x86_64")
        if blob is not None:
            target = Path(self.build_lib) / PACKAGE_PATH
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(blob, target)


def build_purgatory(out: Path) -> Path | None:
    """Run purgatory/x86_64/Makefile into ``out``; None when this host does not build it."""
    cross = os.environ.get("CROSS_COMPILE", "")
    if platform.machine() not in ("x86_64", "AMD64") and not cross:
        print(
            f"kdumpd: the x86_64 purgatory is NOT built on this {platform.machine()} host "
            "(set CROSS_COMPILE=x86_64-linux-gnu- to build it; ppc64le loads do not use it)"
        )
        return None
    make = shutil.which("make")
    if make is None:
        raise SystemExit(
            "kdumpd: building the x86_64 purgatory needs make, gcc and binutils "
            "(Debian: apt-get install make gcc binutils)"
        )
    cmd = [make, "-C", str(SOURCE), f"O={out}"]
    if cross:
        cmd.append(f"CROSS_COMPILE={cross}")
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise SystemExit(f"kdumpd: building the x86_64 purgatory failed ({' '.join(cmd)})")
    return out / "purgatory.bin"


setup(cmdclass={"build_py": BuildPyWithPurgatory})
