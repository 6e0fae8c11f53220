"""The x86_64 purgatory blob as the build makes it (purgatory/x86_64/Makefile, built
here into a scratch directory): a flat image with our header at offset 0, no
relocations, the same bytes at any link address, no SIMD instruction, within budget.

Budget: bufsz (the file kexec copies) <= 8 KiB, memsz (with bss and stack) <= 32 KiB.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kdumpd.arch.x86_64 import purgatory as pg
from kdumpd.arch.x86_64.purgatory import Purgatory, PurgatoryUnavailable, purgatory_blob

from .purgatory_support import SOURCE, build_blob, is_x86_64_host

pytestmark = pytest.mark.skipif(
    not is_x86_64_host(), reason="the x86_64 purgatory is built on x86_64 hosts only"
)

BUFSZ_BUDGET = 8 * 1024
MEMSZ_BUDGET = 32 * 1024


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = Path(tmp_path_factory.mktemp("purgatory-build"))
    build_blob(out_dir)
    return out_dir


def binutil(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} (binutils) is missing; `make venv` installs it"
    return path


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def test_header_at_offset_0(out: Path) -> None:
    blob = (out / "purgatory.bin").read_bytes()
    assert not blob.startswith(b"\x7fELF")
    assert not blob.startswith(b"\xd0\x0d\xfe\xed")
    # e9 rel32: a near jmp to the code at the end of the header
    assert blob[0] == 0xE9
    assert 5 + struct.unpack_from("<i", blob, 1)[0] == pg.HEADER_SIZE
    assert blob[8:16] == pg.MAGIC == b"KDPURG\x00\x01"
    version, header_size, nregions, policy = struct.unpack_from("<IIII", blob, 0x10)
    assert (version, header_size, nregions, policy) == (1, 0x400, 0, 3)
    boot_params, entry, port, memsz = struct.unpack_from("<QQQI", blob, 0x20)
    assert (boot_params, entry, port) == (0, 0, 0x3F8)  # entry 0: never jumps unpatched
    assert blob[0x40 : pg.HEADER_SIZE] == bytes(pg.HEADER_SIZE - 0x40)
    assert len(blob) <= memsz and memsz % 4096 == 0


def test_the_code_starts_at_0x400(out: Path) -> None:
    symbols = run(binutil("nm"), str(out / "purgatory.elf"))
    addresses = {line.split()[2]: int(line.split()[0], 16) for line in symbols.splitlines()}
    assert addresses["purgatory_header"] == 0
    assert addresses["purgatory_start"] == 0x400
    # memsz in the header is the linker's end of bss + stack
    blob = (out / "purgatory.bin").read_bytes()
    assert struct.unpack_from("<I", blob, pg.OFF_MEMSZ)[0] == addresses["purgatory_image_end"]


def test_no_relocations_and_no_got_plt_or_dynamic_sections(out: Path) -> None:
    elf = str(out / "purgatory.elf")
    assert "There are no relocations in this file." in run(binutil("readelf"), "-r", elf)
    sections = run(binutil("readelf"), "-S", "-W", elf)
    names = set(re.findall(r"\]\s+(\S+)", sections))
    assert {".head.text", ".text", ".rodata"} <= names
    assert not {n for n in names if n.startswith((".rela", ".rel.", ".got", ".plt", ".dyn"))}
    assert "Type:                              EXEC" in run(binutil("readelf"), "-h", elf)


def test_same_bytes_at_two_link_addresses(out: Path, tmp_path: Path) -> None:
    """The build already refuses a blob that differs between its two links; check it
    here from scratch, at a third address."""
    objs = [str(out / f"{n}.o") for n in ("entry", "purgatory", "sha256", "serial", "string")]
    flat: list[bytes] = []
    for base in ("0x0", "0x3ffff000"):
        elf = tmp_path / f"at-{base}.elf"
        run(
            binutil("ld"),
            "-nostdlib",
            "-static",
            "--orphan-handling=error",
            "-T",
            str(SOURCE / "purgatory.lds"),
            f"--defsym=PURGATORY_BASE={base}",
            "-o",
            str(elf),
            *objs,
        )
        binary = tmp_path / f"at-{base}.bin"
        run(binutil("objcopy"), "-O", "binary", str(elf), str(binary))
        flat.append(binary.read_bytes())
    assert flat[0] == flat[1] == (out / "purgatory.bin").read_bytes()


def test_no_simd_instructions(out: Path) -> None:
    # the header is data; disassemble the code from 0x400 on
    text = run(binutil("objdump"), "-d", "--start-address=0x400", str(out / "purgatory.elf"))
    assert "<purgatory_start>:" in text
    assert "sha256" in text  # the C really is in there
    simd = [line for line in text.splitlines() if re.search(r"%[xyz]mm\d|%mm\d|%k[0-7]\b", line)]
    assert simd == []


def test_size_budget(out: Path) -> None:
    blob = (out / "purgatory.bin").read_bytes()
    p = Purgatory(blob)
    assert p.bufsz == len(blob) <= BUFSZ_BUDGET
    assert p.memsz <= MEMSZ_BUDGET
    # the stack is page-aligned at the end and not in the file
    assert p.memsz >= ((len(blob) + 4095) & ~4095) + 8192


def test_purgatory_blob_finds_the_checkout_build(out: Path) -> None:
    """`make venv` built build/purgatory/x86_64/purgatory.bin; the same sources give the
    same bytes."""
    assert purgatory_blob() == (out / "purgatory.bin").read_bytes(), (
        "the built purgatory is stale: run `make purgatory`"
    )


def test_purgatory_blob_explicit_path_and_errors(out: Path, tmp_path: Path) -> None:
    assert purgatory_blob(out / "purgatory.bin")[8:16] == pg.MAGIC
    with pytest.raises(PurgatoryUnavailable, match=r"run `make purgatory`"):
        purgatory_blob(tmp_path / "missing.bin")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x7fELF" + bytes(2000))
    with pytest.raises(PurgatoryUnavailable, match="bad magic"):
        purgatory_blob(bad)
