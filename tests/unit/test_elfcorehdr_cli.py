"""`kdumpd elfcorehdr` on captured sysroot trees: the written bytes are checked
against what the captured kernel files say (read here independently of the reader),
with pyelftools and binutils readelf; exit codes 0/1/2 without tracebacks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

from kdumpd import cli
from kdumpd.core.elfcorehdr import elfcorehdr_capacity

from .elfcorehdr_support import readelf_path, run_readelf

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
CPU = "sys/devices/system/cpu"
SUMMARY = re.compile(
    r"^elfcorehdr: (\d+) cpu notes?( \+ vmcoreinfo)?, (\d+) loads?, (\d+)/(\d+) bytes -> (.+)$"
)
TREES = [
    "guest-6.1-before",
    "guest-6.1-after",
    "guest-6.12-before",
    "guest-6.12-after",
    "host-6.18",
    "synthetic-x86_64-before",
    "synthetic-x86_64-after",
    "synthetic-x86_64-virtio-mem",
]


def tree(name: str) -> Path:
    path = FIXTURES / name
    if not (path / "proc" / "iomem").is_file():
        pytest.skip(f"fixture tree {name} is not in tests/fixtures")
    return path


# --- what the captured kernel says, parsed here with no kdumpd code --------------


def cpulist(text: str) -> list[int]:
    out: list[int] = []
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def kernel_facts(root: Path) -> dict[str, object]:
    present = cpulist((root / CPU / "present").read_text())
    notes = []
    for cpu in present:
        f = root / CPU / f"cpu{cpu}" / "crash_notes"
        if f.exists():
            size_file = root / CPU / f"cpu{cpu}" / "crash_notes_size"
            size = int(size_file.read_text()) if size_file.exists() else 1024
            notes.append((cpu, int(f.read_text(), 16), size))
    vmci = None
    vf = root / "sys/kernel/vmcoreinfo"
    if vf.exists():
        addr_text, size_text = vf.read_text().split()
        vmci = (int(addr_text, 16), int(size_text, 16))
    ram: list[tuple[int, int]] = []
    crash: list[tuple[int, int]] = []
    code = None
    for line in (root / "proc/iomem").read_text().splitlines():
        rng, _, name = line.strip().partition(" : ")
        lo, _, hi = rng.partition("-")
        pair = (int(lo, 16), int(hi, 16))
        if name.startswith("System RAM"):
            ram.append(pair)
        elif name == "Crash kernel":
            crash.append(pair)
        elif name == "Kernel code":
            code = pair
    # Cut each crash kernel and x86's always-reserved first MiB out of the RAM list
    # (tiny lists: plain loops suffice).
    for cs, ce in [*crash, (0, 0xFFFFF)]:
        kept: list[tuple[int, int]] = []
        for s, e in ram:
            if e < cs or s > ce:
                kept.append((s, e))
                continue
            if s < cs:
                kept.append((s, cs - 1))
            if e > ce:
                kept.append((ce + 1, e))
        ram = kept
    return {"notes": notes, "vmcoreinfo": vmci, "ram": sorted(ram), "code": code}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["elfcorehdr", *argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- every captured tree ----------------------------------------------------------


@pytest.mark.parametrize("name", TREES)
def test_header_matches_what_the_captured_kernel_says(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tree(name)
    out_file = tmp_path / "elfcorehdr.bin"
    code, out, err = run(capsys, "--sysroot", str(root), "-o", str(out_file))
    assert code == 0, err
    assert err == ""
    m = SUMMARY.match(out.rstrip("\n"))
    assert m, out
    assert out.count("\n") == 1
    facts = kernel_facts(root)
    notes = facts["notes"]
    ram = facts["ram"]
    assert isinstance(notes, list) and isinstance(ram, list)
    has_text = facts["code"] is not None

    data = out_file.read_bytes()
    capacity = int(m.group(5))
    assert len(data) == capacity and capacity % 1024 == 0  # the full fixed buffer
    assert int(m.group(1)) == len(notes)
    assert bool(m.group(2)) == (facts["vmcoreinfo"] is not None)
    assert int(m.group(3)) == len(ram) + has_text
    used = int(m.group(4))
    phnum = len(notes) + (facts["vmcoreinfo"] is not None) + len(ram) + has_text
    assert used == 64 + 56 * phnum
    assert m.group(6) == str(out_file)
    assert not any(data[used:])

    import io

    elf = ELFFile(io.BytesIO(data))
    assert elf["e_type"] == "ET_CORE" and elf["e_machine"] == "EM_X86_64"
    segs = [elf.get_segment(i).header for i in range(elf.num_segments())]
    assert len(segs) == phnum
    got_notes = [(s["p_paddr"], s["p_memsz"]) for s in segs if s["p_type"] == "PT_NOTE"]
    want_notes = [(a, z) for _, a, z in notes]
    if facts["vmcoreinfo"] is not None:
        vmci = facts["vmcoreinfo"]
        assert isinstance(vmci, tuple)
        want_notes.append(vmci)
    assert got_notes == want_notes
    loads = [s for s in segs if s["p_type"] == "PT_LOAD"]
    if has_text:
        text = loads.pop(0)
        code_range = facts["code"]
        assert isinstance(code_range, tuple)
        assert text["p_paddr"] == text["p_offset"] == code_range[0]
        assert text["p_vaddr"] >= 0xFFFFFFFF80000000
        assert text["p_vaddr"] % (1 << 20) == 0  # aligned down to 1 MiB (§1.7)
        assert text["p_memsz"] % 4096 == 0
    assert [(s["p_paddr"], s["p_paddr"] + s["p_memsz"] - 1) for s in loads] == ram
    for s in loads:
        assert s["p_offset"] == s["p_paddr"]
        assert s["p_flags"] == 7


@pytest.mark.parametrize("name", TREES)
def test_readelf_parses_what_the_command_writes(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if readelf_path() is None:
        pytest.skip("binutils readelf not installed (apt-get install binutils)")
    root = tree(name)
    out_file = tmp_path / "elfcorehdr.bin"
    assert run(capsys, "--sysroot", str(root), "-o", str(out_file))[0] == 0
    res = run_readelf(out_file)
    facts = kernel_facts(root)
    notes = facts["notes"]
    ram = facts["ram"]
    assert isinstance(notes, list) and isinstance(ram, list)
    assert res.header["Type"].startswith("CORE")
    assert [p.p_paddr for p in res.phdrs if p.p_type == 4][: len(notes)] == [a for _, a, _ in notes]
    ram_loads = [p for p in res.phdrs if p.p_type == 1][-len(ram) :] if ram else []
    assert [(p.p_paddr, p.p_paddr + p.p_memsz - 1) for p in ram_loads] == ram
    # Every note lives in the first kernel's memory, far past this file's end.
    assert len(res.past_eof_note_sizes) == sum(1 for p in res.phdrs if p.p_type == 4)


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_after_hotplug_the_guest_header_lists_the_new_cpus_and_ram(
    kernel: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Captured before/after a real hot-add (6.1: ACPI CPU hot-add makes CPUs 1-2
    present; 6.12: CPUs were present and only go online; both: a 512 MiB DIMM at
    4 GiB).  The header for "after" must have a note for every present CPU's
    crash_notes and a load for the new RAM."""
    import io

    def header(name: str) -> list[dict[str, Any]]:
        f = tmp_path / f"{name}.bin"
        assert run(capsys, "--sysroot", str(tree(name)), "-o", str(f))[0] == 0
        elf = ELFFile(io.BytesIO(f.read_bytes()))
        return [dict(elf.get_segment(i).header) for i in range(elf.num_segments())]

    def notes(h: list[dict[str, Any]]) -> set[int]:
        return {s["p_paddr"] for s in h if s["p_type"] == "PT_NOTE"}

    def loads(h: list[dict[str, Any]]) -> set[tuple[int, int]]:
        return {(s["p_paddr"], s["p_memsz"]) for s in h if s["p_type"] == "PT_LOAD"}

    before_root = tree(f"guest-{kernel}-before")
    after_root = tree(f"guest-{kernel}-after")
    before = header(f"guest-{kernel}-before")
    after = header(f"guest-{kernel}-after")

    def present_notes(root: Path) -> set[int]:
        facts = kernel_facts(root)["notes"]
        assert isinstance(facts, list)
        return {addr for _, addr, _ in facts}

    hot_cpus = present_notes(after_root) - present_notes(before_root)
    assert notes(after) - notes(before) == hot_cpus
    assert present_notes(after_root) <= notes(after)
    if kernel == "6.1":
        assert len(hot_cpus) == 2  # CPUs 1 and 2 were hot-added
    dimm = (0x100000000, 0x20000000)
    assert dimm in loads(after)
    assert dimm not in loads(before)
    assert len(after) == len(before) + len(hot_cpus) + 1


# --- options, stdout, capacity ------------------------------------------------------


def test_max_cpus_and_ranges_size_the_buffer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tree("guest-6.1-after")
    out_file = tmp_path / "h"
    code, out, err = run(
        capsys,
        "--sysroot",
        str(root),
        "--max-cpus",
        "64",
        "--max-ranges",
        "512",
        "-o",
        str(out_file),
    )
    assert code == 0, err
    assert out_file.stat().st_size == elfcorehdr_capacity(64, 512) == 32768
    assert "/32768 bytes" in out


def test_output_to_stdout_puts_the_summary_on_stderr(
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    root = tree("guest-6.1-after")
    code = cli.main(["elfcorehdr", "--sysroot", str(root), "--max-ranges", "0", "-o", "-"])
    out, err = capfdbinary.readouterr()
    assert code == 0
    assert len(out) == 16384 and out[:4] == b"\x7fELF"
    assert SUMMARY.match(err.decode().strip())
    assert err.decode().strip().endswith("-> stdout")


def test_header_bigger_than_the_capacity_is_exit_1_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    shutil.copytree(tree("guest-6.1-after"), root)
    # 400 extra RAM ranges need 64 + (3 + 1 + 1 + 3 + 400) * 56 > 16 KiB (no low-MiB load).
    extra = "".join(
        f"{0x1000000000 + i * 0x10000000:x}-{0x1000000000 + i * 0x10000000 + 0x7FFFFFF:x} "
        ": System RAM\n"
        for i in range(400)
    )
    iomem = root / "proc/iomem"
    iomem.write_text(iomem.read_text() + extra)
    out_file = tmp_path / "h"
    code, out, err = run(
        capsys, "--sysroot", str(root), "--max-cpus", "4", "--max-ranges", "8", "-o", str(out_file)
    )
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "elfcorehdr" in err and "16384" in err and str(64 + 408 * 56) in err
    assert not out_file.exists()
    # Without the override the default sizing (possible CPUs + 8192 ranges) fits.
    assert run(capsys, "--sysroot", str(root), "-o", str(out_file))[0] == 0


# --- errors ---------------------------------------------------------------------------


def test_corrupted_crash_notes_is_exit_1_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    shutil.copytree(tree("guest-6.1-after"), root)
    (root / CPU / "cpu1/crash_notes").write_text("zz\n")
    code, _, err = run(capsys, "--sysroot", str(root), "-o", str(tmp_path / "h"))
    assert code == 1
    assert err.count("\n") == 1 and "cpu1/crash_notes" in err
    assert "Traceback" not in err
    assert not (tmp_path / "h").exists()


def test_unsupported_arch_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys,
        "--sysroot",
        str(tree("guest-6.1-after")),
        "--arch",
        "s390x",
        "-o",
        str(tmp_path / "h"),
    )
    assert code == 1
    assert "'s390x'" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        [],  # -o is required
        ["-o", "x", "--max-cpus", "-1"],
        ["-o", "x", "--max-ranges", "many"],
        ["-o", "x", "--bogus"],
    ],
)
def test_usage_errors_exit_2_with_one_line(argv: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kdumpd.cli", "elfcorehdr", *argv],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 or proc.stderr.startswith("usage:")


def test_missing_sysroot_is_exit_1_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdumpd.cli",
            "elfcorehdr",
            "--sysroot",
            str(tmp_path / "nope"),
            "-o",
            str(tmp_path / "h"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
