"""kdumpd.arch.x86_64.purgatory: the header patcher, checked against struct packing
written here from docs/purgatory.md (the C layout itself is checked in
test_purgatory_verify.py)."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdumpd.arch.x86_64 import purgatory as pg
from kdumpd.arch.x86_64.purgatory import (
    DEFAULT_POLICY,
    MAX_REGIONS,
    Policy,
    Purgatory,
    PurgatoryError,
    PurgatoryUnavailable,
    Region,
    RegionFlag,
    purgatory_blob,
)
from kdumpd.core.errors import KdumpdError

from .test_purgatory_verify import synthetic_blob


def fields(buf: bytes | bytearray) -> tuple[int, ...]:
    """nregions, policy, boot_params, kernel entry, serial port, memsz."""
    nregions, policy = struct.unpack_from("<II", buf, 0x18)
    boot_params, entry, port = struct.unpack_from("<QQQ", buf, 0x20)
    (memsz,) = struct.unpack_from("<I", buf, 0x38)
    return nregions, policy, boot_params, entry, port, memsz


def region_bytes(buf: bytes | bytearray, i: int) -> tuple[int, int, bytes, int, int]:
    start, length = struct.unpack_from("<QQ", buf, 0x40 + 56 * i)
    digest = bytes(buf[0x40 + 56 * i + 16 : 0x40 + 56 * i + 48])
    flags, reserved = struct.unpack_from("<II", buf, 0x40 + 56 * i + 48)
    return start, length, digest, flags, reserved


def test_constants() -> None:
    assert pg.MAGIC == b"KDPURG\x00\x01"
    assert MAX_REGIONS == 15
    assert 0x40 + MAX_REGIONS * 56 <= pg.HEADER_SIZE == 0x400
    assert (RegionFlag.SKIP, RegionFlag.ELF_STRUCTURAL) == (1, 2)
    assert (Policy.RESET, Policy.SERIAL) == (1, 2)
    assert DEFAULT_POLICY == Policy.RESET | Policy.SERIAL


def test_configure_writes_the_header_fields() -> None:
    p = Purgatory(synthetic_blob())
    buf = p.buffer
    p.configure(boot_params=0x7FFF_F000, kernel_entry=0x1_0000_0200)
    assert fields(buf) == (0, 3, 0x7FFF_F000, 0x1_0000_0200, 0x3F8, 0x3000)
    p.configure(boot_params=1, kernel_entry=2, serial_port=0, policy=Policy(0))
    assert fields(buf) == (0, 0, 1, 2, 0, 0x3000)
    assert (p.boot_params, p.kernel_entry, p.serial_port, p.policy) == (1, 2, 0, Policy(0))
    assert p.buffer is buf and len(buf) == pg.HEADER_SIZE + 64


def test_regions_append_replace_and_hash() -> None:
    p = Purgatory(synthetic_blob())
    a, b, c = b"kernel" * 1000, bytearray(b"initrd" * 3), memoryview(b"\x7fELF" + bytes(60))
    p.set_region(0, 0x100_0000, a)
    p.set_region(1, 0x200_0000, b)
    p.set_region(2, 0x300_0000, c, RegionFlag.ELF_STRUCTURAL)
    p.set_region(3, 0x400_0000, b"boot", RegionFlag.SKIP)
    assert p.nregions == fields(p.buffer)[0] == 4
    assert region_bytes(p.buffer, 0) == (0x100_0000, 6000, hashlib.sha256(a).digest(), 0, 0)
    assert region_bytes(p.buffer, 1) == (0x200_0000, 18, hashlib.sha256(b).digest(), 0, 0)
    assert region_bytes(p.buffer, 2) == (0x300_0000, 64, bytes(32), 2, 0)
    assert region_bytes(p.buffer, 3) == (0x400_0000, 4, bytes(32), 1, 0)
    assert p.region(1) == Region(0x200_0000, 18, hashlib.sha256(b).digest(), RegionFlag(0))
    # replace keeps the count; update_digest keeps start and flags
    p.set_region(1, 0x280_0000, b"x")
    assert p.nregions == 4
    assert region_bytes(p.buffer, 1) == (0x280_0000, 1, hashlib.sha256(b"x").digest(), 0, 0)
    p.update_digest(0, b"new kernel bytes")
    assert region_bytes(p.buffer, 0) == (
        0x100_0000,
        16,
        hashlib.sha256(b"new kernel bytes").digest(),
        0,
        0,
    )
    p.update_digest(2, bytes(128))
    assert region_bytes(p.buffer, 2) == (0x300_0000, 128, bytes(32), 2, 0)
    assert [r.start for r in p.regions()] == [0x100_0000, 0x280_0000, 0x300_0000, 0x400_0000]


def test_fifteen_regions_fit_and_a_sixteenth_does_not() -> None:
    p = Purgatory(synthetic_blob())
    for i in range(MAX_REGIONS):
        p.set_region(i, 0x1000 * (i + 1), bytes([i]))
    assert p.nregions == 15
    before = bytes(p.buffer)
    with pytest.raises(PurgatoryError, match="at most 15"):
        p.set_region(15, 0x100000, b"x")
    assert bytes(p.buffer) == before
    assert len(p.buffer) == pg.HEADER_SIZE + 64


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.set_region(1, 0x1000, b"x"), r"regions 0\.\.0"),
        (lambda p: p.set_region(-1, 0x1000, b"x"), "region -1"),
        (lambda p: p.set_region(0, -1, b"x"), "is not a u64"),
        (lambda p: p.set_region(0, 1 << 64, b"x"), "is not a u64"),
        (lambda p: p.set_region(0, (1 << 64) - 1, b"xy"), "wraps past 2"),
        (lambda p: p.set_region(0, 0x1000, b"x", RegionFlag(4)), "unknown flags"),
        (lambda p: p.update_digest(0, b"x"), "holds 0 regions"),
        (lambda p: p.region(0), "holds 0 regions"),
        (lambda p: p.configure(boot_params=0, kernel_entry=0x1000200), "boot_params address is 0"),
        (lambda p: p.configure(boot_params=0x1000, kernel_entry=0), "kernel entry is 0"),
        (lambda p: p.configure(boot_params=1 << 64, kernel_entry=1), "is not a u64"),
        (
            lambda p: p.configure(boot_params=1, kernel_entry=1, serial_port=0x10000),
            "not an I/O port",
        ),
        (
            lambda p: p.configure(boot_params=1, kernel_entry=1, policy=Policy(4)),
            "unknown bits",
        ),
    ],
)
def test_bad_input_is_a_one_line_error_and_leaves_the_buffer(call: object, message: str) -> None:
    p = Purgatory(synthetic_blob())
    before = bytes(p.buffer)
    with pytest.raises(PurgatoryError, match=message) as err:
        call(p)  # type: ignore[operator]
    assert isinstance(err.value, KdumpdError)
    assert "\n" not in str(err.value)
    assert bytes(p.buffer) == before


def _blob_with(**patch: tuple[int, bytes]) -> bytes:
    blob = bytearray(synthetic_blob())
    for offset, value in patch.values():
        blob[offset : offset + len(value)] = value
    return bytes(blob)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (synthetic_blob()[:0x3FF], "shorter than its 1024-byte header"),
        (_blob_with(m=(8, b"KXPURG\x00\x01")), "wrong magic"),
        (_blob_with(e=(0, b"\x7fELF")), "ELF or FDT magic"),
        (_blob_with(e=(0, b"\xd0\x0d\xfe\xed")), "ELF or FDT magic"),
        (_blob_with(v=(0x10, struct.pack("<I", 2))), "version 2"),
        (_blob_with(h=(0x14, struct.pack("<I", 0x800))), "header size 0x800"),
        (_blob_with(s=(0x38, struct.pack("<I", 0x100))), "memsz 256"),
        (_blob_with(s=(0x38, struct.pack("<I", 2 << 20))), "memsz 2097152"),
        (_blob_with(n=(0x18, struct.pack("<I", 16))), "16 regions"),
    ],
)
def test_a_blob_that_is_not_ours_is_refused(blob: bytes, message: str) -> None:
    with pytest.raises(PurgatoryUnavailable, match=message) as err:
        Purgatory(blob)
    assert "\n" not in str(err.value)


def test_memsz_is_page_rounded() -> None:
    assert Purgatory(_blob_with(s=(0x38, struct.pack("<I", 0x2001)))).memsz == 0x3000


def test_purgatory_blob_says_how_to_build_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(pg, "PACKAGE_BLOB", "not-there.bin")
    monkeypatch.setattr(pg, "_repo_build_blob", lambda: tmp_path / "purgatory.bin")
    with pytest.raises(PurgatoryUnavailable, match=r"not built .*; run `make purgatory`$"):
        purgatory_blob()
    (tmp_path / "purgatory.bin").write_bytes(synthetic_blob())
    assert purgatory_blob() == synthetic_blob()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=(1 << 48)),
            st.binary(max_size=300),
            st.sampled_from([0, 1, 2]),
        ),
        min_size=0,
        max_size=MAX_REGIONS,
    )
)
def test_any_region_list_packs_as_the_spec_says(
    regions: list[tuple[int, bytes, int]],
) -> None:
    p = Purgatory(synthetic_blob())
    p.configure(boot_params=0x1000, kernel_entry=0x2000200)
    for i, (start, data, flags) in enumerate(regions):
        p.set_region(i, start, data, RegionFlag(flags))
    expected = bytearray(synthetic_blob())
    struct.pack_into("<IIQQQ", expected, 0x18, len(regions), 3, 0x1000, 0x2000200, 0x3F8)
    for i, (start, data, flags) in enumerate(regions):
        digest = bytes(32) if flags else hashlib.sha256(data).digest()
        struct.pack_into("<QQ32sII", expected, 0x40 + 56 * i, start, len(data), digest, flags, 0)
    assert p.buffer == expected
