"""The layer table of docs/design.md, checked on every module's imports (ast, so
imports inside functions count too), with no exceptions: every import arrow points
down the table."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "kdumpd"

# Each layer (a package or a top-level module of kdumpd) -> the layers it may import
# besides itself.  Ordered from the bottom up.
CORE = {"core"}
ARCH = CORE | {"arch"}
SYSTEM = ARCH | {"system"}
EVENTS = SYSTEM | {"events"}
CONFIG = SYSTEM | {"config"}
DAEMON = EVENTS | CONFIG | {"daemon"}
INTERFACES = DAEMON | {"interfaces"}
SERVICE = INTERFACES | {"service"}
COMMANDS = SERVICE | {"commands"}
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "arch": CORE,
    "system": ARCH,
    "events": SYSTEM,
    "config": SYSTEM,
    "daemon": EVENTS | CONFIG,
    "interfaces": DAEMON,
    "service": INTERFACES,  # the composition root: wires the edges to the reconciler
    "commands": SERVICE,
    "cli": COMMANDS,  # loads the commands by name (importlib)
    "demo": COMMANDS | {"cli"},
    "data": set(),
    "__init__": set(),
}
# Third-party libraries that are edges: never in the pure core or arch code.
EDGE_LIBRARIES = {
    "pyudev",
    "dbus_fast",
    "systemd",
    "ctypes",
    "asyncio",
    "socket",
    "pydantic",
    "prometheus_client",
}
CORE_THIRD_PARTY = {"libfdt"}  # pure data library, no I/O (crash FDT)
# Standard modules that do I/O, wait or touch the process: never in core.
IO_MODULES = {
    "os",
    "io",
    "pathlib",
    "shutil",
    "subprocess",
    "socket",
    "tempfile",
    "mmap",
    "glob",
    "fcntl",
    "select",
    "selectors",
    "signal",
    "threading",
    "asyncio",
    "ctypes",
    "time",
    "logging",
    "platform",
}
IO_BUILTINS = {"open", "print", "input", "exec", "eval", "__import__", "breakpoint"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _layer(path: Path) -> str:
    return path.relative_to(PKG).parts[0].removesuffix(".py")


def _modules(layer: str | None = None) -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if layer is None or _layer(p) == layer)


def test_every_module_is_in_a_layer() -> None:
    assert sorted({_layer(p) for p in _modules()} - set(ALLOWED)) == []


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_follow_the_layers(layer: str) -> None:
    bad: list[str] = []
    for path in _modules(layer):
        allowed = ALLOWED[layer] | {layer}
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "kdumpd" and len(parts) > 1 and parts[1] not in allowed:
                bad.append(f"{path.relative_to(PKG)}: imports {name}")
    assert bad == []


def test_the_table_has_no_circle() -> None:
    """Nothing a layer may import may import that layer back."""
    bad = [
        f"{a} <-> {b}"
        for a, below in ALLOWED.items()
        for b in below
        if b != a and a in ALLOWED.get(b, set())
    ]
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
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    bad = [
        f"{path.relative_to(PKG)}: imports {name}"
        for path in _modules("core")
        for name in _imports(path)
        if name.split(".")[0] not in stdlib | CORE_THIRD_PARTY | {"kdumpd"}
    ]
    assert bad == []


def test_core_does_no_io() -> None:
    """core turns values into bytes: no file, process, clock or log access."""
    bad: list[str] = []
    for path in _modules("core"):
        rel = path.relative_to(PKG)
        bad += [f"{rel}: imports {n}" for n in _imports(path) if n.split(".")[0] in IO_MODULES]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in IO_BUILTINS
            ):
                bad.append(f"{rel}:{node.lineno}: calls {node.func.id}()")
    assert bad == []
