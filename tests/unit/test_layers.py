"""The layer rules of docs/design.md, checked on every module's imports (ast, so
imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "kdumpd"

# package -> kdumpd packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "arch": {"core"},
    "system": {"core", "arch"},
    "events": {"core", "system"},
    "daemon": {"core", "arch", "system", "events", "config"},
    "interfaces": {"core", "arch", "system", "events", "daemon", "config"},
}
# The composition root wires edges (sd_notify, D-Bus) to the reconciler.
COMPOSITION_ROOTS = {"daemon/daemon.py": {"interfaces"}}
# Third-party libraries that are edges: never in the pure core or arch code.
EDGE_LIBRARIES = {"pyudev", "dbus_fast", "systemd", "ctypes", "asyncio", "socket", "pydantic"}
CORE_THIRD_PARTY = {"libfdt"}  # pure data library, no I/O (crash FDT)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((PKG / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_follow_the_layers(package: str) -> None:
    bad: list[str] = []
    for path in _modules(package):
        rel = path.relative_to(PKG).as_posix()
        allowed = ALLOWED[package] | COMPOSITION_ROOTS.get(rel, set()) | {package}
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "kdumpd" and len(parts) > 1 and parts[1] not in allowed:
                bad.append(f"{rel}: imports {name}")
    assert bad == []


@pytest.mark.parametrize("package", ["core", "arch"])
def test_core_and_arch_import_no_edge_library(package: str) -> None:
    bad = [
        f"{path.relative_to(PKG)}: imports {name}"
        for path in _modules(package)
        for name in _imports(path)
        if name.split(".")[0] in EDGE_LIBRARIES
    ]
    assert bad == []


def test_core_third_party_is_only_libfdt() -> None:
    import sys

    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    bad = [
        f"{path.relative_to(PKG)}: imports {name}"
        for path in _modules("core")
        for name in _imports(path)
        if name.split(".")[0] not in stdlib | CORE_THIRD_PARTY | {"kdumpd"}
    ]
    assert bad == []
