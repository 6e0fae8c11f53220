"""The live device tree (ppc64): ``/cpus``, the CPUs the crash FDT must list, and
``/chosen/linux,memory-limit``.

The tree is read from ``/sys/firmware/devicetree/base`` (``/cpus`` also from
``/proc/device-tree``): one directory per node, one file per property holding its
raw bytes.
"""

from __future__ import annotations

import os

from kdumpd.core.errors import InputError
from kdumpd.core.topology import DtNode
from kdumpd.system.sysroot import Sysroot

__all__ = [
    "DT_CHOSEN",
    "DT_CPUS",
    "read_dt_cell",
    "read_dt_cpus",
    "read_dt_node",
    "read_memory_limit",
]

DT_CPUS = "/sys/firmware/devicetree/base/cpus"
DT_CHOSEN = "/sys/firmware/devicetree/base/chosen"
MEMORY_LIMIT = f"{DT_CHOSEN}/linux,memory-limit"
PROC_DEVICE_TREE = "/proc/device-tree"
#: Deepest node nesting below /cpus we follow (cpu and cache nodes are 1-2 deep).
_DT_MAX_DEPTH = 8


def read_dt_cpus(root: Sysroot) -> tuple[DtNode, ...]:
    """Children of the live device tree's ``/cpus`` (``()`` without a device tree)."""
    found = _dt_cpus_dir(root)
    if found is None:
        return ()
    path, abspath = found
    return read_dt_node(path, abspath, "cpus").children


def _dt_cpus_dir(root: Sysroot) -> tuple[str, str] | None:
    """``(path below the sysroot, usual absolute path)`` of the live tree's ``/cpus``."""
    path = root.path(DT_CPUS)
    if os.path.isdir(path):
        return path, DT_CPUS
    # /proc/device-tree is a symlink to /sys/firmware/devicetree/base; in a captured
    # tree an absolute target must be resolved below the sysroot, not on the host.
    proc = root.path(PROC_DEVICE_TREE)
    try:
        target = os.readlink(proc)
    except OSError:
        target = None
    if target is not None and os.path.isabs(target):
        candidate = root.path(target.rstrip("/")) + "/cpus"
    else:
        candidate = proc + "/cpus"
    if os.path.isdir(candidate):
        return candidate, PROC_DEVICE_TREE + "/cpus"
    return None


def read_dt_node(path: str, abspath: str, name: str, depth: int = 0) -> DtNode:
    """One device-tree node directory: files are properties, directories children."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise InputError(abspath, f"cannot open: {err.strerror or err}") from None
    try:
        return _dt_node_at(fd, abspath, name, depth)
    finally:
        os.close(fd)


def _dt_node_at(fd: int, abspath: str, name: str, depth: int) -> DtNode:
    # Every property is one small file: open/read/close relative to the node's
    # directory descriptor (no path walks; ~2,000 nodes x 30 properties on big LPARs).
    try:
        with os.scandir(fd) as it:
            entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
    except OSError as err:
        raise InputError(abspath, f"cannot list: {err.strerror or err}") from None
    props: list[tuple[str, bytes]] = []
    children: list[DtNode] = []
    for entry, is_dir in entries:
        where = f"{abspath}/{entry}"
        if is_dir:
            if depth >= _DT_MAX_DEPTH:
                raise InputError(where, f"device tree nested deeper than {_DT_MAX_DEPTH}")
            try:
                sub = os.open(entry, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            except OSError as err:
                raise InputError(where, f"cannot open: {err.strerror or err}") from None
            try:
                children.append(_dt_node_at(sub, where, entry, depth + 1))
            finally:
                os.close(sub)
            continue
        try:
            pfd = os.open(entry, os.O_RDONLY, dir_fd=fd)
            try:
                chunks = [os.read(pfd, 65536)]
                while len(chunks[-1]) == 65536:
                    chunks.append(os.read(pfd, 65536))
            finally:
                os.close(pfd)
        except PermissionError:
            raise InputError(where, "permission denied") from None
        except OSError as err:
            raise InputError(where, f"cannot read: {err.strerror or err}") from None
        props.append((entry, chunks[0] if len(chunks) == 1 else b"".join(chunks)))
    return DtNode(name, tuple(props), tuple(children))


def read_dt_cell(root: Sysroot, abspath: str) -> int | None:
    """One big-endian cell of 4 or 8 bytes (``/chosen``'s ``linux,*`` values); None
    where the property is absent, :class:`InputError` for another length."""
    data = root.read_bytes(abspath, limit=16)
    if data is None:
        return None
    if len(data) not in (4, 8):
        raise InputError(abspath, f"{len(data)} bytes, expected one 4- or 8-byte cell")
    return int.from_bytes(data, "big")


def read_memory_limit(root: Sysroot) -> int | None:
    """``/chosen/linux,memory-limit``: the end of the memory the kernel uses, 0 for no
    limit; None where the property is absent (x86, a tree without it).  kexec-tools'
    ppc64 loader leaves RAM at and above a non-zero value out of its elfcorehdr
    (docs/kernel-interfaces.md §10)."""
    return read_dt_cell(root, MEMORY_LIMIT)
