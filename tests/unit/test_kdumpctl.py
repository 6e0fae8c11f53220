"""The kdumpctl shim without a daemon: sysfs fallbacks, crashkernel arithmetic,
usage and refusals.  (Talking to a daemon is in tests/integration/test_dbus.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from kdumpd.core.errors import InputError, UnsupportedError
from kdumpd.interfaces import kdumpctl
from kdumpd.interfaces.kdumpctl import (
    USAGE,
    crashkernel_size_for,
    default_crashkernel,
    parse_crashkernel_ranges,
)

G = 1 << 30
M = 1 << 20


@pytest.fixture(autouse=True)
def _no_bus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No daemon: point the system bus at a socket that does not exist.
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    monkeypatch.delenv("KDUMPD_UPSTREAM_KDUMPCTL", raising=False)
    monkeypatch.setenv("KDUMPCTL_ARCH", "x86_64")


def _root(tmp: Path, loaded: str | None = "1", size: int = 256 * M, ram_gib: int = 16) -> Path:
    root = tmp / "root"
    (root / "sys/kernel").mkdir(parents=True)
    (root / "proc").mkdir()
    if loaded is not None:
        (root / "sys/kernel/kexec_crash_loaded").write_text(loaded + "\n")
    (root / "sys/kernel/kexec_crash_size").write_text(f"{size}\n")
    end = 0x100000000 + (ram_gib - 3) * G - 1
    (root / "proc/iomem").write_text(
        "00000000-00000fff : Reserved\n"
        "00001000-0009ffff : System RAM\n"
        "00100000-bfffffff : System RAM\n"
        "  01000000-01ffffff : Kernel code\n"
        "  2b000000-3affffff : Crash kernel\n"
        f"100000000-{end:x} : System RAM\n"
    )
    return root


def run(root: Path, *args: str) -> int:
    return kdumpctl.main(["--sysroot", str(root), *args])


@pytest.mark.parametrize(("loaded", "code"), [("1", 0), ("0", 3), (None, 3)])
def test_status_from_sysfs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], loaded: str | None, code: int
) -> None:
    assert run(_root(tmp_path, loaded), "status") == code
    out, err = capsys.readouterr()
    assert out == ""
    expected = "operational" if code == 0 else "not operational"
    assert err == f"kdump: Kdump is {expected}\n"


def test_status_fadump(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _root(tmp_path, "0")
    (root / "sys/kernel/fadump").mkdir()
    (root / "sys/kernel/fadump/enabled").write_text("1\n")
    (root / "sys/kernel/fadump/registered").write_text("1\n")
    assert run(root, "status") == 0


def test_sysroot_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDUMPCTL_SYSROOT", str(_root(tmp_path, "1")))
    assert kdumpctl.main(["status"]) == 0


def test_showmem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_root(tmp_path, size=384 * M), "showmem") == 0
    assert capsys.readouterr().err == "kdump: Reserved 384MB memory for crash kernel\n"


def test_showmem_missing_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _root(tmp_path)
    (root / "sys/kernel/kexec_crash_size").unlink()
    assert run(root, "showmem") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kexec_crash_size: missing" in err


@pytest.mark.parametrize("args", [[], ["bogus"], ["--frob", "status"], ["--sysroot"]])
def test_usage(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert kdumpctl.main(args) == 1
    assert capsys.readouterr().err == USAGE + "\n"


@pytest.mark.parametrize("cmd", ["rebuild", "propagate", "reset-crashkernel", "setup-crypttab"])
def test_not_ours_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cmd: str
) -> None:
    assert run(_root(tmp_path), cmd) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kdump: kdumpd does not ")


def test_delegates_to_upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "kdumpctl.upstream"
    marker = tmp_path / "called"
    script.write_text(f'#!/bin/sh\necho "$@" > {marker}\n')
    script.chmod(0o755)
    import subprocess
    import sys

    env = {
        "KDUMPD_UPSTREAM_KDUMPCTL": str(script),
        "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "kdumpd.interfaces.kdumpctl", "reset-crashkernel", "--kernel=ALL"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert marker.read_text() == "reset-crashkernel --kernel=ALL\n"


def test_start_stop_reload_without_daemon_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _root(tmp_path)
    assert run(root, "start") == 1
    err = capsys.readouterr().err
    assert "Starting kdump: [FAILED]" in err and "start kdumpd.service" in err
    assert run(root, "stop") == 1
    assert "Stopping kdump: [FAILED]" in capsys.readouterr().err
    assert run(root, "reload") == 1
    assert "Traceback" not in capsys.readouterr().err


def test_get_default_crashkernel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_root(tmp_path), "get-default-crashkernel") == 0
    out, _ = capsys.readouterr()
    assert out == "2G-64G:256M,64G-:512M"  # no newline, as kdumpctl


def test_get_default_crashkernel_bad_mode(tmp_path: Path) -> None:
    assert run(_root(tmp_path), "get-default-crashkernel", "sideways") == 1


def test_default_crashkernel_table() -> None:
    assert default_crashkernel("x86_64") == "2G-64G:256M,64G-:512M"
    assert default_crashkernel("x86_64", memory_encryption=True) == "2G-64G:320M,64G-:576M"
    assert default_crashkernel("s390x") == "2G-64G:256M,64G-:512M"
    assert default_crashkernel("aarch64") == "2G-4G:256M,4G-64G:320M,64G-:576M"
    assert (
        default_crashkernel("aarch64", page_size=65536, smmu=True, mlx5=True)
        == "2G-4G:940M,4G-64G:1004M,64G-:1260M"
    )
    assert default_crashkernel("aarch64", mlx5=True) == "2G-4G:406M,4G-64G:470M,64G-:726M"
    assert (
        default_crashkernel("ppc64le", nr_cpus=1)
        == "2G-4G:385M,4G-16G:513M,16G-64G:1025M,64G-128G:2049M,128G-:4097M"
    )
    fadump = default_crashkernel("ppc64le", "fadump")
    assert fadump.startswith("4G-16G:769M,16G-64G:1025M") and fadump.endswith("64T-:184321M")
    with pytest.raises(UnsupportedError):
        default_crashkernel("mips")


@pytest.mark.parametrize(
    ("size", "expected"),
    [(1 * G, 0), (2 * G, 256 * M), (16 * G, 256 * M), (64 * G - 1, 256 * M), (64 * G, 512 * M)],
)
def test_crashkernel_size_for(size: int, expected: int) -> None:
    assert crashkernel_size_for("2G-64G:256M,64G-:512M", size) == expected


def test_parse_crashkernel_ranges_errors() -> None:
    assert parse_crashkernel_ranges("1G-:128M") == [(G, None, 128 * M)]
    for bad in ("256M", "1G:128M", "x-2G:1M", "1G-2G:"):
        with pytest.raises(InputError):
            parse_crashkernel_ranges(bad)


def test_system_size_rounds_to_128m(tmp_path: Path) -> None:
    root = _root(tmp_path, ram_gib=16)
    ctx = kdumpctl.Context(sysroot=root, bus_address=None, arch="x86_64")
    ram = (0xA0000 - 0x1000) + 0xC0000000 - 0x100000 + 13 * G
    assert kdumpctl.system_size(ctx) == -(-ram // (128 * M)) * 128 * M
    assert kdumpctl.system_size(ctx) % (128 * M) == 0


def test_estimate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _root(tmp_path, size=128 * M)
    (root / "boot").mkdir()
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text("6.1.0-test\n")
    # A bzImage-shaped header: HdrS, protocol 2.15, init_size 40 MiB.
    head = bytearray(0x300)
    head[0x202:0x206] = b"HdrS"
    head[0x206:0x208] = (0x020F).to_bytes(2, "little")
    head[0x260:0x264] = (40 * M).to_bytes(4, "little")
    (root / "boot/vmlinuz-6.1.0-test").write_bytes(bytes(head))
    (root / "boot/initramfs-6.1.0-testkdump.img").write_bytes(b"\0" * (10 * M))
    (root / "proc/modules").write_text("xfs 2097152 1 - Live 0x0\nloop 40960 0 - Live 0x0\n")
    assert run(root, "estimate") == 0
    out = capsys.readouterr().out.splitlines()
    # 40M kernel + 2.04M modules + 3 x 10M initrd + 16M runtime = 88.04M -> 89M
    assert out[0] == "Reserved crashkernel:    128M"
    assert out[1] == "Recommended crashkernel: 256M"  # the 16 GiB default wins
    assert out[3] == "Kernel image size:   40M"
    assert out[4] == "Kernel modules size: 3M"
    assert out[5] == "Initramfs size:      10M"
    assert out[6] == "Runtime reservation: 16M"
    assert out[7:9] == ["Large modules:", "    xfs: 2097152"]
    assert out[-1] == "WARNING: Current crashkernel size is lower than recommended size 256M."


def test_test_refuses_when_not_operational(tmp_path: Path) -> None:
    root = _root(tmp_path, "0")
    (root / "proc/sysrq-trigger").write_text("")
    assert run(root, "test", "--force") == 1
    assert (root / "proc/sysrq-trigger").read_text() == ""


def test_test_force_triggers_sysrq(tmp_path: Path) -> None:
    root = _root(tmp_path, "1")
    (root / "proc/sysrq-trigger").write_text("")
    assert run(root, "test", "--force") == 0
    assert (root / "proc/sysrq-trigger").read_text() == "c"


def test_test_asks_and_aborts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    root = _root(tmp_path, "1")
    (root / "proc/sysrq-trigger").write_text("")
    monkeypatch.setattr("sys.stdin", io.StringIO("no\n"))
    assert run(root, "test") == 1
    assert (root / "proc/sysrq-trigger").read_text() == ""


@pytest.mark.parametrize(
    "rel", ["etc/kdump.conf", "etc/sysconfig/kdump", "proc/modules", "proc/iomem"]
)
def test_binary_file_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rel: str
) -> None:
    """A binary file where kdumpctl expects text is one line, never a traceback."""
    root = _root(tmp_path)
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(b"\xff\xfe\x00binary\x80\n")
    assert run(root, "estimate") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kdump: estimate: "), err
