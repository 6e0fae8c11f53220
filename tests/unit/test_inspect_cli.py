"""`kdumpd inspect`: the summary, the JSON object, and exit codes 0/1/2 without
tracebacks (in-process for every malformed case, as a real subprocess for some)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kdumpd import cli
from tests.fixtures import make_fixture
from tests.nobody import setpriv_nobody
from tests.unit.test_sysfs import MALFORMED, fixture

REPO = Path(__file__).resolve().parents[2]
KDUMPD = REPO / ".venv" / "bin" / "kdumpd"

JSON_KEYS = {
    "sysroot",
    "arch",
    "release",
    "cpus",
    "crash_notes",
    "system_ram",
    "system_ram_bytes",
    "crashkernel",
    "crashkernel_bytes",
    "kernel_code",
    "vmcoreinfo",
    "kernel_text",
    "page_offset",
    "memory",
    "capabilities",
    "iomem_lines",
}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["inspect", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def kdumpd_argv() -> list[str]:
    if KDUMPD.exists():
        return [str(KDUMPD)]
    return [sys.executable, "-m", "kdumpd.cli"]


def test_json_is_one_object_with_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    root = fixture("synthetic-x86_64-after")
    code, out, err = run_cli(capsys, "--sysroot", str(root), "--json")
    assert code == 0, err
    assert out.count("\n") == 1
    obj = json.loads(out)
    assert set(obj) == JSON_KEYS
    assert obj["cpus"] == {
        "possible": [0, 1, 2, 3],
        "present": [0, 1, 2, 3],
        "online": [0, 1, 2, 3],
    }
    assert obj["crash_notes"][3] == {"cpu": 3, "address": 0x3FCDC5C0, "size": 368}
    assert {"start": 0x100000000, "end": 0x11FFFFFFF, "size": 512 << 20} in obj["system_ram"]
    assert obj["crashkernel"] == [{"start": 0x2F000000, "end": 0x3EFFFFFF, "size": 256 << 20}]
    assert obj["crashkernel_bytes"] == 256 << 20
    assert obj["system_ram_bytes"] == sum(r["size"] for r in obj["system_ram"])
    assert obj["vmcoreinfo"] == {"address": 0x2A8E000, "size": 0x1024}
    assert obj["kernel_text"] == {
        "vaddr": 0xFFFFFFFF94000000,
        "size": 0x2200000,
        "source": "kallsyms",
    }
    assert obj["memory"]["blocks"] == 12
    assert obj["memory"]["online"] == 12
    caps = obj["capabilities"]
    assert caps["cpu_crash_hotplug"] is True
    assert caps["crash_hotplug_config"] is True
    assert caps["crash_elfcorehdr_size"] == 917616
    assert caps["lockdown"] == "none"


def test_json_nulls_for_absent_facts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--sysroot", str(fixture("host-6.18")), "--json")
    assert code == 0
    obj = json.loads(out)
    assert obj["crash_notes"] == []
    assert obj["crashkernel"] == []
    assert obj["capabilities"]["kexec_crash_loaded"] is None
    assert obj["capabilities"]["crash_hotplug_config"] is False


def test_summary_of_guest_after_hotplug(capsys: pytest.CaptureFixture[str]) -> None:
    root = fixture("guest-6.1-after")
    code, out, _ = run_cli(capsys, "--sysroot", str(root))
    assert code == 0
    assert "present 0-2 (3)" in out
    printed = (root / "sys/devices/system/cpu/cpu2/crash_notes").read_text().strip()
    assert f"cpu2     {int(printed, 16):#018x}" in out  # the hot-added CPU's note
    assert "0x0000000100000000-0x000000011fffffff  512 MiB" in out  # the hot-added DIMM
    assert "crashkernel     1 range, 256 MiB" in out
    assert "CONFIG_CRASH_HOTPLUG no" in out


def test_summary_elides_long_lists(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = make_fixture.write_tree(tmp_path / "big", make_fixture.big(ncpus=64, nblocks=64))
    code, out, _ = run_cli(capsys, "--sysroot", str(root))
    assert code == 0
    assert "... 52 more ..." in out  # 64 crash_notes, 12 shown
    assert len(out.splitlines()) < 60


@pytest.mark.parametrize("case", MALFORMED, ids=[f"{c[0]}-{i}" for i, c in enumerate(MALFORMED)])
def test_malformed_input_exits_1_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, case: tuple[str, str, int | None, str]
) -> None:
    rel, content, line, words = case
    root = make_fixture.write_tree(tmp_path / "t", make_fixture.after())
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("latin-1"))
    code, out, err = run_cli(capsys, "--sysroot", str(root))
    assert code == 1
    assert out == ""
    where = f"/{rel}:{line}: " if line is not None else f"/{rel}: "
    assert err.startswith(f"kdumpd inspect: {where}")
    assert words in err
    assert len(err.splitlines()) == 1


def test_subprocess_malformed_crash_notes_no_traceback(tmp_path: Path) -> None:
    root = make_fixture.write_tree(tmp_path / "t", make_fixture.after())
    (root / "sys/devices/system/cpu/cpu3/crash_notes").write_text("not-hex\n")
    proc = subprocess.run(
        [*kdumpd_argv(), "inspect", "--sysroot", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "kdumpd inspect: /sys/devices/system/cpu/cpu3/crash_notes:1: "
        "expected a hexadecimal physical address, found 'not-hex'"
    ]


def test_subprocess_ok_and_usage(tmp_path: Path) -> None:
    root = fixture("guest-6.1-before")
    ok = subprocess.run(
        [*kdumpd_argv(), "inspect", "--sysroot", str(root), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["cpus"]["present"] == [0]
    usage = subprocess.run(
        [*kdumpd_argv(), "inspect", "--sysroot"], capture_output=True, text=True, check=False
    )
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr
    assert len(usage.stderr.strip().splitlines()) == 1


def test_sysroot_not_a_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "--sysroot", str(tmp_path / "nope"))
    assert code == 1
    assert err.strip().endswith("sysroot is not a directory")


def test_empty_directory_is_not_a_sysroot(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_cli(capsys, "--sysroot", str(tmp_path))
    assert code == 1
    assert "/sys/devices/system/cpu/possible: missing" in err


def test_copy_of_guest_tree_without_kcore_or_kallsyms(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = tmp_path / "g"
    shutil.copytree(fixture("guest-6.1-after"), root)
    for name in ("kcore", "kallsyms"):
        (root / "proc" / name).unlink(missing_ok=True)
    code, out, _ = run_cli(capsys, "--sysroot", str(root), "--json")
    assert code == 0
    assert json.loads(out)["kernel_text"] is None


def test_non_root_reading_root_only_crash_notes_exits_1() -> None:
    """crash_notes is mode 0400 (DEVICE_ATTR_ADMIN_RO): uid 65534 gets one clear line."""
    nobody = setpriv_nobody()
    base = Path(tempfile.mkdtemp(prefix="kdumpd-perm-"))
    try:
        base.chmod(0o755)
        root = make_fixture.write_tree(base / "t", make_fixture.after())
        for dirpath, dirnames, _ in os.walk(root):
            for d in dirnames:
                (Path(dirpath) / d).chmod(0o755)
        (root / "sys/devices/system/cpu/cpu0/crash_notes").chmod(0o400)
        proc = subprocess.run(
            [
                *nobody,
                *kdumpd_argv(),
                *("inspect", "--sysroot", str(root)),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        shutil.rmtree(base)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        "kdumpd inspect: /sys/devices/system/cpu/cpu0/crash_notes: "
        "permission denied (root-only; run as root)"
    ]
