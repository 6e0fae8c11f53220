"""The crash FDT (ppc64): a flattened device tree in a fixed-capacity buffer whose
``/cpus`` node is rewritten after CPU hotplug, as the kernel's ``update_crash_fdt()``
does (docs/kernel-interfaces.md §6).

:class:`CrashFdt` keeps one ``bytearray`` of ``capacity`` bytes for its lifetime;
``totalsize`` is always ``capacity``.  :meth:`CrashFdt.write` replaces the children
of ``/cpus`` with exactly the given nodes (``Topology.dt_cpus``: cpu nodes and, unlike
the kernel, the ``l2-cache@...`` nodes they reference), and keeps everything else of
the base blob.  Output order is deterministic (cpu nodes by ``reg`` then name, then
the rest by name; properties by name).  A tree that does not fit raises
:class:`~kdumpd.core.errors.CapacityError` and leaves the buffer as it was: the new
tree is assembled apart, checked with libfdt's ``fdt_check_full()``, then copied in.

The base blob is split once into the pieces around the ``/cpus`` children; a write
encodes the nodes as FDT tokens (cached per node) and joins the pieces: linear in
the tree, where libfdt's in-place ``fdt_add_subnode``/``fdt_setprop`` would be
quadratic (``bench/fdt.py``, docs/performance.md).  New property names are appended
to the strings block, so cached encodings stay valid.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import libfdt

from kdumpd.core.errors import CapacityError, InputError
from kdumpd.core.ranges import round_up
from kdumpd.core.topology import DtNode

FDT_MAGIC = 0xD00DFEED
FDT_BEGIN_NODE = 1
FDT_END_NODE = 2
FDT_PROP = 3
FDT_NOP = 4
FDT_END = 9
FDT_VERSION = 17
FDT_LAST_COMP_VERSION = 16
HEADER_SIZE = 40  # struct fdt_header, version 17
#: Alignment of the FDT segment (and of a capacity we compute ourselves).
FDT_ALIGN = 4096

# magic totalsize off_dt_struct off_dt_strings off_mem_rsvmap version
# last_comp_version boot_cpuid_phys size_dt_strings size_dt_struct
_HEADER = struct.Struct(">10I")
_TOKEN = struct.Struct(">I")
_PROP = struct.Struct(">III")
_BEGIN = _TOKEN.pack(FDT_BEGIN_NODE)
_END_NODE = _TOKEN.pack(FDT_END_NODE)
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")  # _PAD[n % 4] pads n bytes to a 4-multiple
_CACHE_SLACK = 256

_CPUS_PROPS = (("#address-cells", (1).to_bytes(4, "big")), ("#size-cells", bytes(4)))


@dataclass(frozen=True, slots=True)
class FdtLayout:
    """What the last successful :meth:`CrashFdt.write` put into the buffer.

    ``nodes`` are the ``/cpus`` children in written order, ``cpu_nodes`` the subset
    with ``device_type = "cpu"``, ``threads`` the hardware thread ids they list
    (``ibm,ppc-interrupt-server#s``, ascending); ``used`` is the blob size without
    the padding, ``capacity`` the fixed buffer length (= FDT ``totalsize``).
    """

    nodes: tuple[str, ...]
    cpu_nodes: tuple[str, ...]
    threads: tuple[int, ...]
    used: int
    capacity: int


def _fdt_error(source: str, code: int) -> InputError:
    return InputError(source, f"not a valid flattened device tree ({libfdt.fdt_strerror(code)})")


def _check(blob: bytes | bytearray, source: str) -> None:
    if len(blob) < HEADER_SIZE:
        raise InputError(source, f"{len(blob)} bytes is shorter than an FDT header")
    magic, totalsize = struct.unpack_from(">II", blob)
    if magic != FDT_MAGIC:
        raise InputError(source, f"bad FDT magic {magic:#010x} (expected {FDT_MAGIC:#010x})")
    if totalsize > len(blob):
        raise InputError(source, f"FDT totalsize {totalsize} is beyond the {len(blob)} bytes given")
    err = libfdt.fdt_check_full(bytearray(blob[:totalsize]), totalsize)
    if err:
        raise _fdt_error(source, err)


def _skip_name(struct_block: bytes, at: int, source: str) -> int:
    """Offset after a FDT_BEGIN_NODE's NUL-terminated, 4-byte padded name at ``at``."""
    nul = struct_block.find(b"\0", at)
    if nul < 0:
        raise InputError(source, "unterminated node name")
    return round_up(nul + 1, 4)


def _subtree_end(struct_block: bytes, at: int, source: str) -> int:
    """Offset of the FDT_END_NODE closing the node whose FDT_BEGIN_NODE is at ``at``."""
    depth = 0
    n = len(struct_block)
    while at < n:
        (tag,) = _TOKEN.unpack_from(struct_block, at)
        if tag == FDT_BEGIN_NODE:
            depth += 1
            at = _skip_name(struct_block, at + 4, source)
        elif tag == FDT_END_NODE:
            depth -= 1
            if depth == 0:
                return at
            at += 4
        elif tag == FDT_PROP:
            length, _ = struct.unpack_from(">II", struct_block, at + 4)
            at = round_up(at + 12 + length, 4)
        elif tag == FDT_NOP:
            at += 4
        else:
            break
    raise InputError(source, "unbalanced FDT structure block")


def _props_end(struct_block: bytes, at: int, source: str) -> int:
    """Offset after the properties (and NOPs) of the node whose BEGIN_NODE is at ``at``."""
    at = _skip_name(struct_block, at + 4, source)
    while True:
        (tag,) = _TOKEN.unpack_from(struct_block, at)
        if tag == FDT_PROP:
            length, _ = struct.unpack_from(">II", struct_block, at + 4)
            at = round_up(at + 12 + length, 4)
        elif tag == FDT_NOP:
            at += 4
        else:
            return at


class _Strings:
    """The strings block: base bytes plus names appended later (offsets never move)."""

    __slots__ = ("blob", "offsets")

    def __init__(self, blob: bytes) -> None:
        self.blob = bytearray(blob)
        self.offsets: dict[str, int] = {}
        start = 0
        for piece in blob.split(b"\0"):
            if start >= len(blob):
                break
            with contextlib.suppress(UnicodeDecodeError):  # never looked up then
                self.offsets.setdefault(piece.decode("ascii"), start)
            start += len(piece) + 1

    def offset(self, name: str) -> int:
        off = self.offsets.get(name)
        if off is None:
            off = len(self.blob)
            self.blob += name.encode("ascii") + b"\0"
            self.offsets[name] = off
        return off


class _Entry(NamedTuple):
    """One encoded ``/cpus`` child; tuples order by ``key`` (names are unique)."""

    key: tuple[int, int, str]
    name: str
    encoded: bytes
    threads: tuple[int, ...]
    cpu: bool


def _validate_name(name: str, what: str) -> None:
    if not name or "\0" in name or "/" in name or not name.isascii():
        raise InputError("device tree /cpus", f"invalid {what} name {name[:40]!r}")


def _sort_key(node: DtNode) -> tuple[int, int, str]:
    if node.is_cpu:
        reg = node.reg
        return (0, reg if reg is not None else 1 << 32, node.name)
    return (1, 0, node.name)


def _check_unique(names: Sequence[str]) -> None:
    """Two ``/cpus`` children with one name would make an invalid tree."""
    if len(set(names)) != len(names):
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise InputError("device tree /cpus", f"node {name!r} appears twice")
            seen.add(name)


def order_nodes(nodes: Iterable[DtNode]) -> list[DtNode]:
    """The deterministic output order: cpu nodes by ``reg`` then name, then the rest."""
    ordered = sorted(nodes, key=_sort_key)
    _check_unique([n.name for n in ordered])
    return ordered


def encoded_size(node: DtNode) -> int:
    """Bytes ``node`` takes in the structure block (strings block not counted)."""
    size = 4 + round_up(len(node.name) + 1, 4) + 4
    for _, value in node.properties:
        size += 12 + round_up(len(value), 4)
    for child in node.children:
        size += encoded_size(child)
    return size


class CrashFdt:
    """A crash FDT living in one preallocated, fixed-length ``bytearray``.

    ``base`` is the blob the image was (or will be) loaded with; ``capacity``
    defaults to its ``totalsize``.  The buffer starts out holding the base tree
    (``totalsize`` = capacity); its ``/cpus`` children are also what :meth:`write`
    puts back when it is given ``None``.  Raises :class:`InputError` for a base that
    is not a valid version-17 FDT and :class:`CapacityError` when it does not fit
    ``capacity``.
    """

    __slots__ = (
        "_after",
        "_base_children",
        "_before",
        "_boot_cpuid",
        "_buffer",
        "_cache",
        "_layout",
        "_rsvmap",
        "_strings",
        "_view",
        "_zeros",
    )

    def __init__(
        self, base: bytes | bytearray, capacity: int | None = None, *, source: str = "FDT"
    ) -> None:
        _check(base, source)
        blob = bytes(base[: struct.unpack_from(">I", base, 4)[0]])
        hdr = _HEADER.unpack_from(blob)
        _, totalsize, off_struct, off_strings, off_rsv, version = hdr[:6]
        if version < FDT_VERSION:
            raise InputError(
                source, f"FDT version {version} (need 17; convert it with dtc -I dtb -O dtb)"
            )
        fdt = libfdt.FdtRo(blob)
        n_rsv = fdt.num_mem_rsv()
        self._rsvmap = blob[off_rsv : off_rsv + (n_rsv + 1) * 16]
        self._boot_cpuid = hdr[7]
        struct_block = blob[off_struct : off_struct + hdr[9]]
        self._strings = _Strings(blob[off_strings : off_strings + hdr[8]])
        self._cache: dict[DtNode, _Entry] = {}

        cpus = fdt.path_offset("/cpus", libfdt.QUIET_NOTFOUND)
        if cpus >= 0:
            props_end = _props_end(struct_block, cpus, source)
            cpus_end = _subtree_end(struct_block, cpus, source)
            self._before = struct_block[:props_end]
            self._base_children = struct_block[props_end:cpus_end]
            self._after = struct_block[cpus_end:]
        else:  # no /cpus at all: add one as the root's last child
            root_end = _subtree_end(struct_block, 0, source)
            cpus_node = self._encode(DtNode("cpus", _CPUS_PROPS))
            self._before = struct_block[:root_end] + cpus_node[:-4]
            self._base_children = b""
            self._after = _END_NODE + struct_block[root_end:]

        if capacity is None:
            capacity = totalsize
        if capacity < HEADER_SIZE:
            raise ValueError(f"FDT capacity {capacity} is smaller than an FDT header")
        self._buffer = bytearray(capacity)
        self._view = memoryview(self._buffer)  # exported: the length can never change
        self._zeros = memoryview(bytes(capacity))
        self._layout: FdtLayout | None = None
        self.write(None)  # the loaded tree, padded to the capacity (CapacityError if not)

    # ------------------------------------------------------------------ properties

    @property
    def buffer(self) -> bytearray:
        """The FDT bytes: always this object, always ``capacity`` long."""
        return self._buffer

    @property
    def capacity(self) -> int:
        return len(self._view)

    @property
    def layout(self) -> FdtLayout | None:
        """What the last successful :meth:`write` wrote (the base tree at first)."""
        return self._layout

    # -------------------------------------------------------------------- encoding

    def _entry(self, node: DtNode) -> _Entry:
        """The cached encoding and ordering facts of one ``/cpus`` child."""
        entry = self._cache.get(node)
        if entry is None:
            cpu = node.is_cpu
            entry = _Entry(
                _sort_key(node),
                node.name,
                self._encode(node),
                node.interrupt_servers if cpu else (),
                cpu,
            )
            self._cache[node] = entry
        return entry

    def _encode(self, node: DtNode) -> bytes:
        _validate_name(node.name, "node")
        name = node.name.encode("ascii") + b"\0"
        parts = [_BEGIN, name, _PAD[len(name) % 4]]
        offset = self._strings.offset
        pack = _PROP.pack
        props = sorted(node.properties)
        for (key, _), (key2, _) in itertools.pairwise(props):
            if key == key2:
                raise InputError("device tree /cpus", f"{node.name}: property {key!r} twice")
        for key, value in props:
            if key not in self._strings.offsets:
                _validate_name(key, "property")
            parts += (pack(FDT_PROP, len(value), offset(key)), value, _PAD[len(value) % 4])
        parts += [self._encode(child) for child in node.children]
        parts.append(_END_NODE)
        return b"".join(parts)

    def _entries(self, nodes: Sequence[DtNode] | None) -> list[_Entry] | None:
        """``/cpus`` children in output order (``None``: the base blob's)."""
        if nodes is None:
            return None
        if len(self._cache) > 2 * len(nodes) + _CACHE_SLACK:
            self._cache.clear()  # hot-removed nodes' encodings
        cache = self._cache
        missing = [n for n in nodes if n not in cache]
        if missing:  # encode new nodes in output order: new property names then land
            for node in sorted(missing, key=_sort_key):  # in the strings block in a
                self._entry(node)  # deterministic order whatever the input order
        entries = sorted(map(self._entry, nodes))  # _Entry sorts by its sort key first
        _check_unique([e.name for e in entries])
        return entries

    def _pieces(self, entries: list[_Entry] | None) -> tuple[list[bytes | bytearray], int, int]:
        """Blob pieces after the header, the struct block size and the total size."""
        children: list[bytes | bytearray] = (
            [self._base_children] if entries is None else [e.encoded for e in entries]
        )
        strings = self._strings.blob
        size_struct = len(self._before) + sum(map(len, children)) + len(self._after)
        used = HEADER_SIZE + len(self._rsvmap) + size_struct + len(strings)
        return [self._rsvmap, self._before, *children, self._after, strings], size_struct, used

    def size_for(self, nodes: Sequence[DtNode] | None) -> int:
        """Bytes (without padding) the tree takes with ``nodes`` as ``/cpus`` children.

        Also validates ``nodes`` like :meth:`write` (same :class:`InputError`), so a
        successful call means :meth:`write` succeeds when the size fits.
        """
        return self._pieces(self._entries(nodes))[2]

    # ----------------------------------------------------------------------- write

    def write(self, nodes: Sequence[DtNode] | None) -> FdtLayout:
        """Rewrite the buffer with ``nodes`` as the children of ``/cpus``.

        ``None`` keeps the base blob's children (a topology without device-tree
        nodes).  Raises :class:`CapacityError` (buffer untouched) when the tree does
        not fit, :class:`InputError` (buffer untouched) for invalid names or a node
        given twice.
        """
        entries = self._entries(nodes)
        pieces, size_struct, used = self._pieces(entries)
        capacity = len(self._view)
        if used > capacity:
            n = "base" if nodes is None else str(len(nodes))
            raise CapacityError(f"crash FDT ({n} /cpus nodes)", used, capacity)
        off_struct = HEADER_SIZE + len(self._rsvmap)
        off_strings = off_struct + size_struct
        header = _HEADER.pack(
            FDT_MAGIC,
            used,  # checked at this size, written with totalsize = capacity
            off_struct,
            off_strings,
            HEADER_SIZE,
            FDT_VERSION,
            FDT_LAST_COMP_VERSION,
            self._boot_cpuid,
            used - off_strings,
            size_struct,
        )
        blob = bytearray().join([header, *pieces])
        err = libfdt.fdt_check_full(blob, used)
        if err:  # our encoder produced something libfdt rejects: never write it
            raise _fdt_error("crash FDT (assembled)", err)
        if entries is None:
            layout = _layout_of(blob, used, capacity)
        else:
            layout = FdtLayout(
                nodes=tuple(e.name for e in entries),
                cpu_nodes=tuple(e.name for e in entries if e.cpu),
                threads=tuple(sorted(t for e in entries for t in e.threads)),
                used=used,
                capacity=capacity,
            )

        view = self._view
        view[:used] = blob
        struct.pack_into(">I", self._buffer, 4, capacity)  # totalsize = the whole buffer
        view[used:] = self._zeros[used:]
        self._layout = layout
        return layout


def _layout_of(blob: bytes | bytearray, used: int, capacity: int) -> FdtLayout:
    fdt = libfdt.FdtRo(blob)
    cpus = fdt.path_offset("/cpus")
    names: list[str] = []
    cpu_names: list[str] = []
    threads: list[int] = []
    node = fdt.first_subnode(cpus, libfdt.QUIET_NOTFOUND)
    while node >= 0:
        name = fdt.get_name(node)
        names.append(name)
        dtype = fdt.getprop(node, "device_type", libfdt.QUIET_NOTFOUND)
        if not isinstance(dtype, int) and bytes(dtype).split(b"\0", 1)[0] == b"cpu":
            cpu_names.append(name)
            servers = fdt.getprop(node, "ibm,ppc-interrupt-server#s", libfdt.QUIET_NOTFOUND)
            if not isinstance(servers, int):
                raw = bytes(servers)
                threads += [
                    int.from_bytes(raw[i : i + 4], "big") for i in range(0, len(raw) - 3, 4)
                ]
        node = fdt.next_subnode(node, libfdt.QUIET_NOTFOUND)
    return FdtLayout(tuple(names), tuple(cpu_names), tuple(sorted(threads)), used, capacity)


def required_capacity(
    fdt: CrashFdt,
    nodes: Sequence[DtNode] | None,
    *,
    possible_threads: int,
    align: int = FDT_ALIGN,
) -> int:
    """Capacity for ``nodes`` plus every possible core not present yet.

    As the kernel sizes a crash FDT (``kexec_extra_fdt_size_ppc64()``): the missing
    cores are ``possible_threads / threads per core - cpu nodes``, each budgeted at
    the size of the largest present cpu node (plus its name/property strings).
    Rounded up to ``align``; never less than the current capacity.
    """
    cpu_nodes = [n for n in nodes or () if n.is_cpu]
    tpc = max((len(n.interrupt_servers) for n in cpu_nodes), default=1) or 1
    missing = max(0, -(-possible_threads // tpc) - len(cpu_nodes))
    per_node = max((encoded_size(n) + 16 for n in cpu_nodes), default=0)
    needed = fdt.size_for(nodes) + missing * per_node
    return max(round_up(needed, align), fdt.capacity)


def minimal_fdt(*, boot_cpuid_phys: int = 0, size_hint: int = 1024) -> bytes:
    """A skeleton tree (``/`` with 2/2 cells, empty ``/cpus`` and ``/chosen``) built
    with libfdt's sequential writer, for when no base blob is at hand."""
    sw = libfdt.FdtSw(size_hint)
    sw.finish_reservemap()
    with sw.add_node(""):
        sw.property_u32("#address-cells", 2)
        sw.property_u32("#size-cells", 2)
        with sw.add_node("cpus"):
            sw.property_u32("#address-cells", 1)
            sw.property_u32("#size-cells", 0)
        with sw.add_node("chosen"):
            pass
    fdt = sw.as_fdt()
    data = bytearray(fdt.as_bytearray())
    struct.pack_into(">I", data, 28, boot_cpuid_phys)
    return bytes(data)
