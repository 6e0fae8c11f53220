"""Smaller things a new user met (issue 12, item 6): each test failed before its fix."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from kdumpd.events.storm import system_ram, write_memory_storm

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests/fixtures/guest-6.1-before"


def test_the_readme_storm_really_resizes_32_to_512_gib(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    cmd = re.search(r"w\(\"/dev/shm/root\", \"/tmp/storm.jsonl\"(.*?)\)'", readme)
    assert cmd is not None and "base_gib=32" in cmd.group(1)
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    n = write_memory_storm(root, tmp_path / "storm.jsonl", base_gib=32)
    assert n == 3840
    start = system_ram((root / "proc/iomem").read_text())
    last = json.loads((tmp_path / "storm.jsonl").read_text().splitlines()[-1])
    end = system_ram(last["files"]["proc/iomem"])
    assert round(start / 2**30, 3) == 32.0
    assert round(end / 2**30, 3) == 512.0


def test_pyproject_license_is_an_spdx_string() -> None:
    """A license table prints setuptools' deprecation warning on every install."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "GPL-2.0-or-later"
    assert "setuptools>=77" in project["build-system"]["requires"]
