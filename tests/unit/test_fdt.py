"""The crash FDT (kdumpd.core.fdt): every blob we write is decompiled by the real
``dtc`` and read back with libfdt; hypothesis drives random CPU sets, including
ones that overflow the fixed buffer."""

from __future__ import annotations

import struct

import libfdt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdumpd.core.errors import CapacityError, InputError
from kdumpd.core.fdt import (
    FDT_MAGIC,
    CrashFdt,
    encoded_size,
    minimal_fdt,
    order_nodes,
    required_capacity,
)
from kdumpd.core.topology import DtNode
from kdumpd.system.topologyreader import read_topology

from .fdt_support import (
    AFTER,
    BEFORE,
    base_blob,
    cache,
    compile_dts,
    core,
    cpus_block,
    decompile,
    libfdt_children,
    totalsize,
    u32,
    without_cpus,
)


@pytest.fixture(scope="module")
def base() -> bytes:
    return base_blob()


def dts_cells(value: bytes) -> str:
    """How dtc prints a property of 32-bit cells."""
    cells = struct.unpack(f">{len(value) // 4}I", value)
    return "<" + " ".join(f"0x{c:02x}" for c in cells) + ">"


# ------------------------------------------------------------------ fixture trees


def test_hot_added_core_appears_and_nothing_else_changes(base: bytes) -> None:
    after = read_topology(AFTER)
    fdt = CrashFdt(base)
    buf = fdt.buffer
    layout = fdt.write(after.dt_cpus)

    assert fdt.buffer is buf
    assert len(buf) == totalsize(base) == layout.capacity == totalsize(buf)
    assert layout.cpu_nodes == ("PowerPC,POWER9@0", "PowerPC,POWER9@2", "PowerPC,POWER9@4")
    assert layout.threads == (0, 1, 2, 3, 4, 5)
    assert not any(buf[layout.used :])  # the padding is zeros

    dts = decompile(buf)
    nodes = cpus_block(dts)
    assert list(nodes) == list(layout.cpu_nodes)
    for node in after.dt_cpus:
        printed = nodes[node.name]
        # dtc drops a "name" property that just repeats the node name
        assert sorted(printed) == sorted(k for k, _ in node.properties if k != "name")
        assert printed["device_type"] == '"cpu"'
        assert printed["reg"] == dts_cells(node.prop("reg") or b"")
        assert printed["ibm,ppc-interrupt-server#s"] == dts_cells(
            node.prop("ibm,ppc-interrupt-server#s") or b""
        )
        assert printed["64-bit"] == ""
    # property values byte for byte, read back by libfdt
    assert libfdt_children(buf) == [(n.name, dict(n.properties)) for n in after.dt_cpus]
    # everything outside /cpus (memreserve, chosen, memory, rtas, root props) is intact
    assert without_cpus(dts) == without_cpus(decompile(base))


def test_before_tree_reproduces_the_loaded_cpu_nodes(base: bytes) -> None:
    before = read_topology(BEFORE)
    fdt = CrashFdt(base)
    fdt.write(before.dt_cpus)
    got = cpus_block(decompile(fdt.buffer))
    want = cpus_block(decompile(base))
    assert list(got) == list(want) == ["PowerPC,POWER9@0", "PowerPC,POWER9@2"]
    assert got == want
    # the live tree's "name" property is copied too (dtc hides it: it repeats the name)
    for name, props in libfdt_children(fdt.buffer):
        assert props["name"] == b"PowerPC,POWER9\0", name


def test_regenerating_again_is_idempotent_and_removal_works(base: bytes) -> None:
    after = read_topology(AFTER)
    before = read_topology(BEFORE)
    fdt = CrashFdt(base)
    fdt.write(after.dt_cpus)
    first = bytes(fdt.buffer)
    fdt.write(after.dt_cpus)
    assert bytes(fdt.buffer) == first
    fdt.write(before.dt_cpus)  # core @4 hot-removed again
    assert list(cpus_block(decompile(fdt.buffer))) == ["PowerPC,POWER9@0", "PowerPC,POWER9@2"]


def test_none_keeps_the_base_children(base: bytes) -> None:
    fdt = CrashFdt(base)
    layout = fdt.write(None)
    assert layout.cpu_nodes == ("PowerPC,POWER9@0", "PowerPC,POWER9@2")
    assert layout.threads == (0, 1, 2, 3)
    assert decompile(fdt.buffer) == decompile(base)


def test_header_fields(base: bytes) -> None:
    fdt = CrashFdt(base, 16384)
    layout = fdt.write([core(0), core(2)])
    magic, total, off_struct, off_strings, off_rsv, version, last_comp, boot = struct.unpack_from(
        ">8I", fdt.buffer
    )
    assert (magic, total, version, last_comp) == (FDT_MAGIC, 16384, 17, 16)
    assert boot == struct.unpack_from(">I", base, 28)[0]
    assert off_rsv == 40 and off_rsv < off_struct < off_strings < layout.used <= 16384
    assert libfdt.fdt_check_full(bytearray(fdt.buffer), len(fdt.buffer)) == 0


# ----------------------------------------------------------------- order and names


def test_output_order_is_deterministic_cpu_by_reg_then_other_nodes() -> None:
    fdt = CrashFdt(minimal_fdt(), 8192)
    nodes = [cache(0x2010), core(16), core(2), cache(0x2000), core(0)]
    layout = fdt.write(nodes)
    names = ["PowerPC,POWER9@0", "PowerPC,POWER9@2", "PowerPC,POWER9@10"]
    assert layout.nodes == (*names, "l2-cache@2000", "l2-cache@2010")
    assert layout.cpu_nodes == tuple(names)
    assert list(cpus_block(decompile(fdt.buffer))) == list(layout.nodes)
    reversed_layout = CrashFdt(minimal_fdt(), 8192)
    reversed_layout.write(list(reversed(nodes)))
    assert bytes(reversed_layout.buffer) == bytes(fdt.buffer)


def test_new_property_names_go_to_the_strings_block(base: bytes) -> None:
    fdt = CrashFdt(base)
    node = core(0, extra=(("kdumpd,brand-new-property", b"\x01\x02\x03"),))
    fdt.write([node])
    assert cpus_block(decompile(fdt.buffer))["PowerPC,POWER9@0"]["kdumpd,brand-new-property"] == (
        "[01 02 03]"
    )


@pytest.mark.parametrize(
    "node",
    [
        DtNode("", (("device_type", b"cpu\0"),)),
        DtNode("a/b", (("device_type", b"cpu\0"),)),
        DtNode("cpu@0", (("", b""),)),
        DtNode("cpu@0", (("reg", u32(0)), ("reg", u32(1)))),
    ],
)
def test_invalid_nodes_are_input_errors_and_leave_the_buffer(base: bytes, node: DtNode) -> None:
    fdt = CrashFdt(base)
    fdt.write(None)
    before = bytes(fdt.buffer)
    with pytest.raises(InputError):
        fdt.write([core(0), node])
    assert bytes(fdt.buffer) == before


def test_duplicate_node_names_are_input_errors() -> None:
    fdt = CrashFdt(minimal_fdt(), 4096)
    with pytest.raises(InputError, match="twice"):
        fdt.write([core(0), core(0, threads=4)])


# --------------------------------------------------------------------- base blobs


@pytest.mark.parametrize(
    ("blob", "problem"),
    [
        (b"\0" * 64, "bad FDT magic"),
        (b"\xd0\x0d", "shorter than an FDT header"),
        (struct.pack(">II", FDT_MAGIC, 4096) + bytes(56), "beyond"),
        (struct.pack(">II", FDT_MAGIC, 64) + bytes(56), "not a valid flattened device tree"),
    ],
)
def test_bad_base_blobs_are_input_errors(blob: bytes, problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        CrashFdt(blob, source="base.dtb")


def test_base_without_cpus_gets_one() -> None:
    blob = compile_dts('/dts-v1/;\n/ { model = "x"; chosen { }; };\n')
    fdt = CrashFdt(blob, 4096)
    fdt.write([core(0)])
    dts = decompile(fdt.buffer)
    assert list(cpus_block(dts)) == ["PowerPC,POWER9@0"]
    assert "#address-cells = <0x01>;" in dts and "chosen {" in dts


def test_minimal_fdt_is_a_valid_skeleton() -> None:
    blob = minimal_fdt(boot_cpuid_phys=4)
    dts = decompile(blob)
    assert "cpus {" in dts and "chosen {" in dts
    assert struct.unpack_from(">I", blob, 28)[0] == 4


def test_base_children_outside_a_padded_blob_are_not_needed(base: bytes) -> None:
    # dtc -p leaves the padding after the strings block; the blob's totalsize is kept
    fdt = CrashFdt(base)
    assert fdt.capacity == totalsize(base)


# ------------------------------------------------------------------------- capacity


def test_overflow_raises_capacity_error_and_keeps_the_old_tree(base: bytes) -> None:
    fdt = CrashFdt(base)
    fdt.write(read_topology(BEFORE).dt_cpus)
    good = bytes(fdt.buffer)
    many = [core(reg, extra=(("pad", bytes(200)),)) for reg in range(0, 200, 2)]
    with pytest.raises(CapacityError) as err:
        fdt.write(many)
    assert err.value.capacity == fdt.capacity and err.value.needed > fdt.capacity
    assert bytes(fdt.buffer) == good
    decompile(fdt.buffer)  # still a valid tree


def test_required_capacity_fits_every_possible_core(base: bytes) -> None:
    present = [core(0), core(2)]
    probe = CrashFdt(base)
    capacity = required_capacity(probe, present, possible_threads=256)
    assert capacity > probe.capacity and capacity % 4096 == 0
    fdt = CrashFdt(base, capacity)
    layout = fdt.write([core(reg) for reg in range(0, 256, 2)])  # all 128 possible cores
    assert len(layout.cpu_nodes) == 128 and layout.capacity == capacity
    # and not wildly oversized: less than one spare core per 4 KiB alignment step
    assert capacity - layout.used < 4096 + encoded_size(core(0)) + 16
    # fewer possible CPUs than present ones never shrinks below the loaded blob
    assert required_capacity(probe, present, possible_threads=1) == probe.capacity
    assert encoded_size(core(0)) > 0


# ----------------------------------------------------------------------- properties

POOL = [
    core(reg, extra=(("ibm,pa-features", bytes([reg % 256]) * (reg % 7)),))
    for reg in range(0, 128, 2)
]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    picks=st.lists(st.sampled_from(POOL), unique_by=lambda n: n.name, max_size=40),
    caches=st.lists(st.sampled_from([cache(u) for u in range(0x2000, 0x2010)]), unique=True),
    capacity=st.integers(min_value=1024, max_value=16384),
    shuffle=st.randoms(use_true_random=False),
)
def test_random_cpu_sets(
    base: bytes,
    picks: list[DtNode],
    caches: list[DtNode],
    capacity: int,
    shuffle: object,
) -> None:
    fdt = CrashFdt(base, max(capacity, 4096))
    buf = fdt.buffer
    old = read_topology(BEFORE).dt_cpus
    fdt.write(old)
    good = bytes(buf)
    nodes = picks + caches
    shuffle.shuffle(nodes)  # type: ignore[attr-defined]
    expected = order_nodes(nodes)
    try:
        layout = fdt.write(nodes)
    except CapacityError as err:
        assert err.needed > fdt.capacity
        assert bytes(buf) == good  # the old tree survives, byte for byte
        assert fdt.buffer is buf and len(buf) == fdt.capacity
        return
    assert fdt.buffer is buf and len(buf) == fdt.capacity == totalsize(buf)
    assert layout.nodes == tuple(n.name for n in expected)
    assert libfdt_children(buf) == [(n.name, dict(n.properties)) for n in expected]
    regs = [n.reg for n in expected if n.is_cpu]
    assert regs == sorted(regs)
    assert not any(buf[layout.used :])


@settings(max_examples=15, deadline=None)
@given(picks=st.lists(st.sampled_from(POOL), unique_by=lambda n: n.name, max_size=12))
def test_random_cpu_sets_decompile_with_dtc(picks: list[DtNode]) -> None:
    fdt = CrashFdt(minimal_fdt(), 16384)
    fdt.write(picks)
    nodes = cpus_block(decompile(fdt.buffer))
    assert list(nodes) == [n.name for n in order_nodes(picks)]
    for n in picks:
        assert sorted(nodes[n.name]) == sorted(k for k, _ in n.properties)


def test_the_buffer_holds_the_loaded_tree_from_the_start(base: bytes) -> None:
    fdt = CrashFdt(base, 8192)
    assert fdt.layout is not None and fdt.layout.cpu_nodes == (
        "PowerPC,POWER9@0",
        "PowerPC,POWER9@2",
    )
    assert totalsize(fdt.buffer) == 8192 == len(fdt.buffer)
    assert decompile(fdt.buffer) == decompile(base)


def test_a_base_larger_than_the_capacity_is_a_capacity_error(base: bytes) -> None:
    with pytest.raises(CapacityError):
        CrashFdt(base, 1024)


def test_version_16_blobs_are_refused_with_a_hint() -> None:
    blob = compile_dts("/dts-v1/;\n/ { cpus { }; };\n", pad=0)
    v16 = bytearray(blob)
    struct.pack_into(">I", v16, 20, 16)  # claim version 16
    with pytest.raises(InputError, match="need 17"):
        CrashFdt(bytes(v16), source="old.dtb")


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.lists(st.sampled_from(POOL), unique_by=lambda n: n.name, max_size=30),
        min_size=1,
        max_size=8,
    ),
    capacity=st.integers(min_value=4096, max_value=12288),
)
def test_hotplug_sequences_on_one_buffer(steps: list[list[DtNode]], capacity: int) -> None:
    """Add/remove cores in random bursts: every write either describes exactly its
    nodes or fails with CapacityError and leaves the previous tree byte for byte."""
    fdt = CrashFdt(minimal_fdt(), capacity)
    buf = fdt.buffer
    current: list[DtNode] = []
    for nodes in steps:
        previous = bytes(buf)
        try:
            layout = fdt.write(nodes)
        except CapacityError:
            assert bytes(buf) == previous
        else:
            current = nodes
            assert layout.used <= capacity
        assert fdt.buffer is buf and len(buf) == capacity == totalsize(buf)
        assert libfdt_children(buf) == [(n.name, dict(n.properties)) for n in order_nodes(current)]
