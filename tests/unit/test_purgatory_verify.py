"""purgatory.c compiled for the host, run against headers the Python patcher wrote:
the C struct layout is the one the patcher writes (offsetof, not Python constants),
good regions pass, one flipped byte fails with that region's index and the line and
policy the purgatory would use, ``skip`` is skipped, ``structural`` takes a real
elfcorehdr from the core and refuses a corrupt one."""

from __future__ import annotations

import ctypes
import random
from pathlib import Path

import pytest

from kdumpd.arch.x86_64 import X86_64
from kdumpd.arch.x86_64 import purgatory as pg
from kdumpd.arch.x86_64.purgatory import Policy, Purgatory, RegionFlag
from kdumpd.core.elfcorehdr import Elfcorehdr

from .elfcorehdr_support import small_topology
from .purgatory_support import address_of, build_host_library

OK, DIGEST_MISMATCH, BAD_STRUCTURE, BAD_HEADER = 0, 1, 2, 3
KERNEL_ENTRY = 0x1000200
BOOT_PARAMS = 0x3FFF000


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return build_host_library(Path(tmp_path_factory.mktemp("purgatory-host")))


def synthetic_blob() -> bytes:
    """A header-only blob with the layout of the real one (the patcher needs nothing
    else; the real blob is tested in test_purgatory_blob.py)."""
    blob = bytearray(pg.HEADER_SIZE + 64)
    blob[0:5] = b"\xe9\xfb\x03\x00\x00"
    blob[pg.OFF_MAGIC : pg.OFF_MAGIC + 8] = pg.MAGIC
    blob[pg.OFF_VERSION : pg.OFF_VERSION + 4] = (1).to_bytes(4, "little")
    blob[pg.OFF_HEADER_SIZE : pg.OFF_HEADER_SIZE + 4] = pg.HEADER_SIZE.to_bytes(4, "little")
    blob[pg.OFF_MEMSZ : pg.OFF_MEMSZ + 4] = (0x3000).to_bytes(4, "little")
    # the defaults entry.S assembles in
    blob[pg.OFF_POLICY : pg.OFF_POLICY + 4] = (3).to_bytes(4, "little")
    blob[pg.OFF_SERIAL_PORT : pg.OFF_SERIAL_PORT + 8] = (0x3F8).to_bytes(8, "little")
    return bytes(blob)


def verify(lib: ctypes.CDLL, p: Purgatory) -> tuple[int, int]:
    region = ctypes.c_uint32(0xFFFF)
    verdict = lib.host_verify(address_of(p.buffer), ctypes.byref(region))
    return verdict, region.value


def run_main(lib: ctypes.CDLL, p: Purgatory) -> tuple[int, str, int]:
    line = ctypes.create_string_buffer(512)
    port = ctypes.c_uint64(0)
    policy = lib.host_main(address_of(p.buffer), line, len(line), ctypes.byref(port))
    return policy, line.value.decode(), port.value


def real_elfcorehdr() -> bytearray:
    hdr = Elfcorehdr(4096, 62)
    X86_64().build_elfcorehdr(small_topology(), hdr)
    return hdr.buffer


class Image:
    """A few "segments" in host memory and a patched header describing them."""

    def __init__(self, sizes: list[int], seed: int = 1) -> None:
        rng = random.Random(seed)
        self.segments = [bytearray(rng.randbytes(n)) for n in sizes]
        self.purgatory = Purgatory(synthetic_blob())
        self.purgatory.configure(boot_params=BOOT_PARAMS, kernel_entry=KERNEL_ENTRY)
        for i, seg in enumerate(self.segments):
            self.purgatory.set_region(i, address_of(seg), seg)


def test_c_layout_is_the_patchers_layout(lib: ctypes.CDLL) -> None:
    def c(name: str) -> int:
        value = int(lib.host_layout(name.encode()))
        assert value != ctypes.c_size_t(-1).value, name
        return value

    assert c("header size") == pg.HEADER_SIZE
    assert c("max regions") == pg.MAX_REGIONS
    assert c("sizeof region") == pg.REGION_SIZE
    assert c("sizeof header") == pg.OFF_REGIONS + pg.MAX_REGIONS * pg.REGION_SIZE
    assert c("sizeof header") <= pg.HEADER_SIZE
    assert {
        name: c(name)
        for name in (
            "magic",
            "version",
            "header_size",
            "nregions",
            "policy",
            "boot_params",
            "kernel_entry",
            "serial_port",
            "memsz",
            "regions",
            "region.start",
            "region.len",
            "region.sha256",
            "region.flags",
        )
    } == {
        "magic": pg.OFF_MAGIC,
        "version": pg.OFF_VERSION,
        "header_size": pg.OFF_HEADER_SIZE,
        "nregions": pg.OFF_NREGIONS,
        "policy": pg.OFF_POLICY,
        "boot_params": pg.OFF_BOOT_PARAMS,
        "kernel_entry": pg.OFF_KERNEL_ENTRY,
        "serial_port": pg.OFF_SERIAL_PORT,
        "memsz": pg.OFF_MEMSZ,
        "regions": pg.OFF_REGIONS,
        "region.start": pg.REGION_OFF_START,
        "region.len": pg.REGION_OFF_LEN,
        "region.sha256": pg.REGION_OFF_SHA256,
        "region.flags": pg.REGION_OFF_FLAGS,
    }


def test_good_regions_pass_and_main_returns(lib: ctypes.CDLL) -> None:
    image = Image([4096, 1, 0, 100_000, 64])
    assert verify(lib, image.purgatory) == (OK, 4)
    assert run_main(lib, image.purgatory) == (
        -1,
        "kdumpd purgatory: 5 regions ok, starting the capture kernel at 0x1000200\r\n",
        0x3F8,
    )
    image.purgatory.configure(
        boot_params=BOOT_PARAMS, kernel_entry=0xFFFF_FFFF_FFFF_FFF0, policy=Policy.RESET
    )
    assert run_main(lib, image.purgatory) == (-1, "", 0)  # no serial bit: silent
    image.purgatory.configure(
        boot_params=BOOT_PARAMS, kernel_entry=0xFFFF_FFFF_FFFF_FFF0, serial_port=0x2F8
    )
    assert run_main(lib, image.purgatory)[1:] == (
        "kdumpd purgatory: 5 regions ok, starting the capture kernel at 0xfffffffffffffff0\r\n",
        0x2F8,
    )
    one = Image([1])
    assert run_main(lib, one.purgatory)[1].startswith("kdumpd purgatory: 1 region ok,")


@pytest.mark.parametrize("index", [0, 2, 14])
def test_one_flipped_byte_fails_with_its_region_index(lib: ctypes.CDLL, index: int) -> None:
    image = Image([4096 + i for i in range(15)], seed=index)
    seg = image.segments[index]
    seg[len(seg) // 2] ^= 0x01  # after the digests were computed
    assert verify(lib, image.purgatory) == (DIGEST_MISMATCH, index)
    policy, line, port = run_main(lib, image.purgatory)
    assert policy == Policy.RESET | Policy.SERIAL
    assert port == 0x3F8
    assert line == (
        f"kdumpd purgatory: region {index} sha256 mismatch, "
        "capture kernel not started, resetting\r\n"
    )
    # a burst rehashes just that region and the image checks out again
    image.purgatory.update_digest(index, seg)
    assert verify(lib, image.purgatory) == (OK, 14)


def test_the_last_byte_and_the_first_byte_count(lib: ctypes.CDLL) -> None:
    for where in (0, -1):
        image = Image([200, 300])
        image.segments[1][where] ^= 0x80
        assert verify(lib, image.purgatory) == (DIGEST_MISMATCH, 1)


def test_policy_halt_and_silent(lib: ctypes.CDLL) -> None:
    image = Image([128])
    image.segments[0][0] ^= 1
    image.purgatory.configure(
        boot_params=BOOT_PARAMS, kernel_entry=KERNEL_ENTRY, serial_port=0x2F8, policy=Policy.SERIAL
    )
    assert run_main(lib, image.purgatory) == (
        int(Policy.SERIAL),
        "kdumpd purgatory: region 0 sha256 mismatch, capture kernel not started, halting\r\n",
        0x2F8,
    )
    image.purgatory.configure(
        boot_params=BOOT_PARAMS, kernel_entry=KERNEL_ENTRY, policy=Policy.RESET
    )
    assert run_main(lib, image.purgatory) == (int(Policy.RESET), "", 0)
    image.purgatory.configure(boot_params=BOOT_PARAMS, kernel_entry=KERNEL_ENTRY, serial_port=0)
    assert run_main(lib, image.purgatory) == (int(Policy.RESET | Policy.SERIAL), "", 0)


def test_skip_is_skipped(lib: ctypes.CDLL) -> None:
    image = Image([512, 512, 512])
    image.purgatory.set_region(1, address_of(image.segments[1]), image.segments[1], RegionFlag.SKIP)
    image.segments[1][7] ^= 0xFF
    assert verify(lib, image.purgatory) == (OK, 2)
    image.segments[2][7] ^= 0xFF  # the next one is still checked
    assert verify(lib, image.purgatory) == (DIGEST_MISMATCH, 2)


def test_structural_accepts_the_cores_elfcorehdr_and_refuses_a_corrupt_one(
    lib: ctypes.CDLL,
) -> None:
    hdr = real_elfcorehdr()
    image = Image([256, 256])
    image.purgatory.set_region(2, address_of(hdr), hdr, RegionFlag.ELF_STRUCTURAL)
    assert lib.host_elfcorehdr_ok(address_of(hdr), len(hdr)) == 1
    assert verify(lib, image.purgatory) == (OK, 2)
    # the kernel rewrites it in place (6.6+): contents change, the shape does not
    hdr[200] ^= 0xFF
    assert verify(lib, image.purgatory) == (OK, 2)
    e_phnum = int.from_bytes(hdr[56:58], "little")
    for offset, value in [
        (0, 0x7E),  # \x7fELF
        (4, 1),  # ELFCLASS32
        (5, 2),  # big-endian
        (16, 1),  # ET_REL, not ET_CORE
        (32, 0x40 + 8),  # e_phoff
        (54, 32),  # e_phentsize
    ]:
        bad = bytearray(hdr)
        bad[offset] = value
        assert lib.host_elfcorehdr_ok(address_of(bad), len(bad)) == 0, offset
    # program headers past the region's end
    assert lib.host_elfcorehdr_ok(address_of(hdr), 64 + e_phnum * 56 - 1) == 0
    assert lib.host_elfcorehdr_ok(address_of(hdr), 64 + e_phnum * 56) == 1
    hdr[0] = 0
    assert verify(lib, image.purgatory) == (BAD_STRUCTURE, 2)
    policy, line, _ = run_main(lib, image.purgatory)
    assert policy == Policy.RESET | Policy.SERIAL
    assert line.startswith("kdumpd purgatory: region 2 is not an ELF64 core header,")


def test_header_without_kernel_entry_never_jumps(lib: ctypes.CDLL) -> None:
    p = Purgatory(synthetic_blob())  # as built: kernel entry 0, policy reset|serial
    assert verify(lib, p) == (BAD_HEADER, 0)
    policy, line, _ = run_main(lib, p)
    assert policy == Policy.RESET | Policy.SERIAL
    assert line == (
        "kdumpd purgatory: bad header (nregions 0, no kernel entry), "
        "capture kernel not started, resetting\r\n"
    )


def test_too_many_regions_never_jumps(lib: ctypes.CDLL) -> None:
    image = Image([16])
    image.purgatory.buffer[pg.OFF_NREGIONS] = 16  # not something the patcher writes
    assert verify(lib, image.purgatory)[0] == BAD_HEADER
