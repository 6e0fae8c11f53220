"""ppc64le behind the Arch interface: the elfcorehdr (pyelftools + binutils readelf),
the crash FDT segment in CrashImage, the device-tree reader, and the ``kdumpd
elfcorehdr --arch ppc64le`` / ``kdumpd fdt`` commands on the synthetic sysroots."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

from kdumpd import cli
from kdumpd.arch import FdtArch, get_arch
from kdumpd.arch.ppc64le import EM_PPC64, PPC64_PAGE_OFFSET, Ppc64le
from kdumpd.core.elfcorehdr import Elfcorehdr
from kdumpd.core.errors import CapacityError, InputError
from kdumpd.core.image import PAGE_SIZE, CrashImage, SegmentKind
from kdumpd.core.topology import KernelCapabilities
from kdumpd.system.topologyreader import read_topology

from .fdt_support import AFTER, BEFORE, FIXTURES, base_blob, cpus_block, decompile, totalsize

CPU = "sys/devices/system/cpu"
ARCH = Ppc64le()


def notes_from_files(root: Path) -> dict[int, tuple[int, int]]:
    """cpu -> (crash_notes address, size), read straight from the tree."""
    out: dict[int, tuple[int, int]] = {}
    for d in sorted((root / CPU).glob("cpu[0-9]*")):
        if (d / "crash_notes").is_file():
            addr = int((d / "crash_notes").read_text(), 16)
            out[int(d.name[3:])] = (addr, int((d / "crash_notes_size").read_text()))
    return out


def phdrs(blob: bytes | bytearray, tmp_path: Path) -> tuple[Any, list[dict[str, int | str]]]:
    path = tmp_path / "elfcorehdr"
    path.write_bytes(blob)
    with path.open("rb") as f:
        elf = ELFFile(f)
        header = elf.header
        rows = [
            {
                "type": p["p_type"],
                "offset": p["p_offset"],
                "vaddr": p["p_vaddr"],
                "paddr": p["p_paddr"],
                "filesz": p["p_filesz"],
                "memsz": p["p_memsz"],
            }
            for p in elf.iter_segments()
        ]
        little = elf.little_endian
    return (header, little), rows


# ------------------------------------------------------------------------ the arch


def test_registered_with_the_ppc64_facts() -> None:
    arch = get_arch("ppc64le")
    assert isinstance(arch, FdtArch)
    assert arch.name == "ppc64le" and arch.elf_machine == EM_PPC64 == 21
    assert arch.regenerated_segments == {SegmentKind.ELFCOREHDR, SegmentKind.FDT}


def test_hotplug_digest_leaves_out_elfcorehdr_and_fdt() -> None:
    with_hp = ARCH.digested_segments(hotplug=True)
    without = ARCH.digested_segments(hotplug=False)
    assert SegmentKind.ELFCOREHDR not in with_hp and SegmentKind.FDT not in with_hp
    assert {SegmentKind.ELFCOREHDR, SegmentKind.FDT} <= without
    assert SegmentKind.PURGATORY not in with_hp | without
    assert SegmentKind.KERNEL in with_hp


def test_capacity_policy() -> None:
    topo = read_topology(BEFORE)
    # the fixture kernel advertises 64 + (8 + 1 + 8192) * 56 = 459320 -> 1 KiB aligned
    assert topo.capabilities.crash_elfcorehdr_size == 459320
    assert ARCH.elfcorehdr_capacity(topo) == 459776
    no_sysfs = replace(topo, capabilities=KernelCapabilities())
    # the kernel's ppc64 formula with possible CPUs (8) and 8192 ranges
    assert ARCH.elfcorehdr_capacity(no_sysfs) == -(-(64 + (8 + 1 + 8192) * 56) // 1024) * 1024
    assert ARCH.elfcorehdr_capacity(topo, max_cpus=16, max_ranges=4) == 2048
    with pytest.raises(ValueError):
        ARCH.elfcorehdr_capacity(topo, max_cpus=-1)
    tiny = replace(topo, capabilities=KernelCapabilities(crash_elfcorehdr_size=100))
    assert ARCH.elfcorehdr_capacity(tiny) >= 64 + (4 + 1 + 3) * 56  # never below the need


@pytest.mark.parametrize("tree", [BEFORE, AFTER])
def test_elfcorehdr_read_by_pyelftools(tree: Path, tmp_path: Path) -> None:
    topo = read_topology(tree)
    hdr = Elfcorehdr(ARCH.elfcorehdr_capacity(topo), ARCH.elf_machine)
    layout = ARCH.build_elfcorehdr(topo, hdr)
    (header, little), rows = phdrs(hdr.buffer, tmp_path)
    assert little and header["e_ident"]["EI_DATA"] == "ELFDATA2LSB"
    assert header["e_machine"] == "EM_PPC64" and header["e_type"] == "ET_CORE"

    notes = notes_from_files(tree)
    present = [c for c in sorted(notes)]
    cpu_rows = rows[: len(present)]
    assert [(r["type"], r["offset"], r["filesz"]) for r in cpu_rows] == [
        ("PT_NOTE", notes[c][0], notes[c][1]) for c in present
    ]
    vmci = (tree / "sys/kernel/vmcoreinfo").read_text().split()
    assert rows[len(present)]["type"] == "PT_NOTE"
    assert rows[len(present)]["paddr"] == int(vmci[0], 16)
    loads = [r for r in rows if r["type"] == "PT_LOAD"]
    # no kernel-text load; the first 64 KiB split off; the Crash kernel range excluded
    assert [(r["paddr"], r["memsz"]) for r in loads] == [
        (0, 0x10000),
        (0x10000, 0x08000000 - 0x10000),
        (0x28000000, 0x100000000 - 0x28000000),
    ]
    assert all(r["vaddr"] == PPC64_PAGE_OFFSET + r["paddr"] for r in loads)
    assert not layout.kernel_text and layout.loads == 3


def test_readelf_says_powerpc64_little_endian(tmp_path: Path) -> None:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("binutils readelf is not installed")
    topo = read_topology(AFTER)
    hdr = Elfcorehdr(ARCH.elfcorehdr_capacity(topo), ARCH.elf_machine)
    ARCH.build_elfcorehdr(topo, hdr)
    path = tmp_path / "h"
    path.write_bytes(hdr.buffer)
    out = subprocess.run(
        [readelf, "-h", "-l", "-W", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"Machine:\s+PowerPC64", out)
    assert re.search(r"Data:\s+2's complement, little endian", out)
    assert re.search(r"Type:\s+CORE", out)
    assert len(re.findall(r"^\s+NOTE\s", out, re.M)) == 6 + 1
    assert len(re.findall(r"^\s+LOAD\s", out, re.M)) == 3
    assert "0xc000000028000000" in out


# --------------------------------------------------------------------- crash image


def test_image_has_an_fdt_segment_below_the_elfcorehdr() -> None:
    base = base_blob()
    topo = read_topology(BEFORE)
    image = CrashImage.for_topology(ARCH, topo, ARCH.elfcorehdr_capacity(topo), fdt_base=base)
    ehdr, fdt = image.elfcorehdr, image.fdt
    assert fdt is not None and image.crash_fdt is not None
    assert image.segments == (ehdr, fdt)
    assert fdt.kind == SegmentKind.FDT and fdt.buf is image.crash_fdt.buffer
    assert fdt.mem % PAGE_SIZE == 0 and fdt.memsz % PAGE_SIZE == 0
    assert fdt.range.end < ehdr.mem  # top-down: right below the elfcorehdr
    crash = topo.crashkernel[-1]
    assert crash.start <= fdt.mem and ehdr.range.end <= crash.end
    assert len(fdt.buf) == totalsize(fdt.buf) == image.crash_fdt.capacity >= totalsize(base)


def test_regenerate_rewrites_both_buffers_in_place() -> None:
    base = base_blob()
    before, after = read_topology(BEFORE), read_topology(AFTER)
    image = CrashImage.for_topology(ARCH, before, ARCH.elfcorehdr_capacity(before), fdt_base=base)
    fdt_seg = image.fdt
    assert fdt_seg is not None and image.fdt_layout is not None
    ehdr_buf, fdt_buf = image.elfcorehdr.buf, fdt_seg.buf
    assert len(image.fdt_layout.cpu_nodes) == 2
    layout = image.regenerate(after)
    assert image.elfcorehdr.buf is ehdr_buf and image.fdt is fdt_seg and fdt_seg.buf is fdt_buf
    assert layout.cpus == (0, 1, 2, 3, 4, 5)
    assert image.fdt_layout.cpu_nodes[-1] == "PowerPC,POWER9@4"
    assert list(cpus_block(decompile(fdt_buf))) == [
        "PowerPC,POWER9@0",
        "PowerPC,POWER9@2",
        "PowerPC,POWER9@4",
    ]


def test_fdt_too_small_leaves_both_segments_as_they_were() -> None:
    base = base_blob()
    before, after = read_topology(BEFORE), read_topology(AFTER)
    cap = ARCH.elfcorehdr_capacity(before)
    # a segment sized exactly for the two boot cores: no room for the hot-added one
    probe = CrashImage.for_topology(ARCH, before, cap, fdt_base=base)
    assert probe.fdt_layout is not None
    tight = probe.fdt_layout.used
    image = CrashImage.for_topology(ARCH, before, cap, fdt_base=base, fdt_capacity=tight)
    assert image.fdt is not None
    ehdr_before, fdt_before = bytes(image.elfcorehdr.buf), bytes(image.fdt.buf)
    with pytest.raises(CapacityError, match="crash FDT"):
        image.regenerate(after)
    assert bytes(image.elfcorehdr.buf) == ehdr_before
    assert bytes(image.fdt.buf) == fdt_before
    assert image.layout is not None and image.layout.cpus == (0, 1, 2, 3)


def test_default_fdt_capacity_has_room_for_every_possible_core() -> None:
    before = read_topology(BEFORE)
    image = CrashImage.for_topology(ARCH, before, ARCH.elfcorehdr_capacity(before))
    assert image.crash_fdt is not None and image.fdt_layout is not None
    # 8 possible CPUs / 2 threads per core = 4 cores; fill the two missing ones
    more = [*before.dt_cpus]
    for reg in (4, 6):
        node = before.dt_cpus[0]
        props = tuple((k, reg.to_bytes(4, "big") if k == "reg" else v) for k, v in node.properties)
        more.append(replace(node, name=f"PowerPC,POWER9@{reg:x}", properties=props))
    layout = image.crash_fdt.write(more)
    assert len(layout.cpu_nodes) == 4


def test_x86_64_images_have_no_fdt() -> None:
    topo = read_topology(FIXTURES / "synthetic-x86_64-after")
    arch = get_arch("x86_64")
    image = CrashImage.for_topology(arch, topo, arch.elfcorehdr_capacity(topo))
    assert image.fdt is None and image.segments == (image.elfcorehdr,)
    assert topo.dt_cpus == ()


# -------------------------------------------------------------------------- reader


def test_reader_returns_the_device_tree_cpu_nodes() -> None:
    topo = read_topology(AFTER)
    assert topo.arch == "ppc64le"
    names = [n.name for n in topo.dt_cpus]
    assert names == ["PowerPC,POWER9@0", "PowerPC,POWER9@2", "PowerPC,POWER9@4"]
    node = topo.dt_cpus[2]
    assert node.is_cpu and node.reg == 4 and node.interrupt_servers == (4, 5)
    raw = AFTER / "sys/firmware/devicetree/base/cpus/PowerPC,POWER9@4"
    assert dict(node.properties) == {p.name: p.read_bytes() for p in raw.iterdir()}
    assert [k for k, _ in node.properties] == sorted(k for k, _ in node.properties)


def test_image_key_changes_with_the_cpu_nodes_only_on_ppc64() -> None:
    before, after = read_topology(BEFORE), read_topology(AFTER)
    assert before.image_key() != after.image_key()
    assert before.image_key()[-1] == before.dt_cpus
    x86 = read_topology(FIXTURES / "synthetic-x86_64-after")
    assert len(x86.image_key()) == 7  # unchanged shape without device-tree nodes
    same_notes = replace(after, dt_cpus=before.dt_cpus, crash_notes=before.crash_notes)
    assert same_notes.image_key() != replace(same_notes, dt_cpus=after.dt_cpus).image_key()


def test_reader_follows_proc_device_tree_inside_the_sysroot(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(AFTER, root, symlinks=True)
    real = root / "sys/firmware/devicetree/base"
    moved = root / "sys/firmware/dt-elsewhere"
    real.rename(moved)
    link = root / "proc/device-tree"
    link.unlink()
    os.symlink("/sys/firmware/dt-elsewhere", link)  # absolute: must not reach the host
    topo = read_topology(root)
    assert [n.name for n in topo.dt_cpus][-1] == "PowerPC,POWER9@4"


def test_reader_skips_the_device_tree_on_other_architectures(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(AFTER, root, symlinks=True)
    topo = read_topology(root, arch="x86_64")
    assert topo.dt_cpus == ()


def test_reader_reports_a_too_deep_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(AFTER, root, symlinks=True)
    deep = root / "sys/firmware/devicetree/base/cpus/PowerPC,POWER9@0"
    for i in range(10):
        deep = deep / f"n{i}"
    deep.mkdir(parents=True)
    with pytest.raises(InputError, match="nested deeper"):
        read_topology(root)


# ----------------------------------------------------------------------------- CLI


def test_cli_elfcorehdr_for_ppc64le(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "h"
    code = cli.main(["elfcorehdr", "--arch", "ppc64le", "--sysroot", str(AFTER), "-o", str(out)])
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert line == f"elfcorehdr: 6 cpu notes + vmcoreinfo, 3 loads, 624/459776 bytes -> {out}"
    with out.open("rb") as f:
        assert ELFFile(f).header["e_machine"] == "EM_PPC64"


def test_cli_fdt_writes_the_regenerated_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "crash.dtb"
    base.write_bytes(base_blob())
    out = tmp_path / "out.dtb"
    code = cli.main(["fdt", "--sysroot", str(AFTER), "--base", str(base), "-o", str(out)])
    assert code == 0
    line = capsys.readouterr().out.strip()
    m = re.fullmatch(
        r"fdt: 3 cpu nodes \(6 threads\), 3 /cpus nodes, (\d+)/(\d+) bytes -> (.+)", line
    )
    assert m is not None, line
    data = out.read_bytes()
    assert int(m.group(2)) == len(data) == totalsize(data) == totalsize(base.read_bytes())
    assert m.group(3) == str(out)
    assert list(cpus_block(decompile(data)))[-1] == "PowerPC,POWER9@4"


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--sysroot", "{x86}", "--base", "{base}", "-o", "{out}"], 1, "has no crash FDT"),
        (["--sysroot", "{after}", "--base", "{text}", "-o", "{out}"], 1, "bad FDT magic"),
        (
            ["--sysroot", "{after}", "--base", "{base}", "--capacity", "2000", "-o", "{out}"],
            1,
            "needs",
        ),
        (["--sysroot", "{after}", "--base", "{missing}", "-o", "{out}"], 1, "No such file"),
        (["--sysroot", "{no_dt}", "--base", "{base}", "-o", "{out}"], 1, "no device-tree cpu"),
        (
            ["--sysroot", "{after}", "--base", "{base}", "--capacity", "12", "-o", "{out}"],
            2,
            "FDT header",
        ),
        (["--sysroot", "{after}", "--base", "{base}"], 2, "required"),
    ],
)
def test_cli_fdt_errors_are_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    message: str,
) -> None:
    base = tmp_path / "crash.dtb"
    base.write_bytes(base_blob())
    text = tmp_path / "text"
    text.write_text("not a device tree at all, just some text\n")
    no_dt = tmp_path / "no-dt"
    if "{no_dt}" in argv:
        shutil.copytree(AFTER, no_dt, symlinks=True)
        shutil.rmtree(no_dt / "sys/firmware")
        (no_dt / "proc/device-tree").unlink()
    names = {
        "x86": FIXTURES / "synthetic-x86_64-after",
        "after": AFTER,
        "base": base,
        "text": text,
        "missing": tmp_path / "missing.dtb",
        "no_dt": no_dt,
        "out": tmp_path / "out.dtb",
    }
    args = ["fdt", *(a.format(**names) for a in argv)]
    if code == 2:
        with pytest.raises(SystemExit) as exc:
            cli.main(args)
        assert exc.value.code == 2
    else:
        assert cli.main(args) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "out.dtb").exists()
