"""The kexec_file_load probe (invalid flags): which answer it gives, and that it is not
made where the kernel's permission check would use up a limited load."""

from __future__ import annotations

import ctypes
import errno
from pathlib import Path
from typing import Any

import pytest

from kdumpd.daemon.backends.probe import probe_backend
from kdumpd.system.kexec import kexec_file_load_available
from kdumpd.system.kexecsysfs import KEXEC_LOAD_LIMIT_REBOOT, read_load_limit

LIMIT_REBOOT = "proc/sys/kernel/kexec_load_limit_reboot"


class FakeSyscall:
    """Records every raw syscall; answers with ``err`` (0: success)."""

    def __init__(self, err: int = errno.EINVAL) -> None:
        self.err = err
        self.calls: list[tuple[int, int]] = []  # (nr, flags)

    def __call__(self, nr: Any, *args: Any) -> int:
        # args: kernel_fd, initrd_fd, cmdline_len, cmdline, flags
        self.calls.append((nr.value, args[4].value))
        if self.err:
            ctypes.set_errno(self.err)
            return -1
        return 0


def _sysroot(tmp_path: Path, limit: str | None) -> Path:
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    if limit is not None:
        (tmp_path / LIMIT_REBOOT).write_text(limit + "\n")
    return tmp_path


@pytest.mark.parametrize(
    ("err", "answer"), [(errno.EINVAL, True), (errno.ENOSYS, False), (errno.EPERM, None)]
)
@pytest.mark.parametrize("limit", [None, "-1"])  # 6.1 has no sysctl; -1 = no limit
def test_probe_runs_without_a_reboot_load_limit(
    tmp_path: Path, err: int, answer: bool | None, limit: str | None
) -> None:
    sys = FakeSyscall(err)
    root = _sysroot(tmp_path, limit)
    assert kexec_file_load_available("x86_64", sysroot=root, syscall=sys) is answer
    assert len(sys.calls) == 1
    nr, flags = sys.calls[0]
    assert nr == 320 and flags & 0x2 == 0  # no KEXEC_FILE_ON_CRASH: the reboot limit counts


@pytest.mark.parametrize("limit", ["0", "1", "5"])
def test_no_probe_while_kexec_load_limit_reboot_is_set(tmp_path: Path, limit: str) -> None:
    """kexec_load_permitted() runs before the flag check and, from 6.3, takes one load
    off a set limit: the probe would spend a reboot load the admin rationed."""
    sys = FakeSyscall()
    root = _sysroot(tmp_path, limit)
    assert kexec_file_load_available("x86_64", sysroot=root, syscall=sys) is None
    assert sys.calls == []


def test_probe_backend_reads_the_limit_from_its_sysroot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """probe_backend's default probe reads kexec_load_limit_reboot below the sysroot it
    was given, not below /."""
    seen: list[int | None] = []
    fake = FakeSyscall()

    def available(machine: str | None = None, *, sysroot: Any = "/", **_: Any) -> bool | None:
        seen.append(read_load_limit(sysroot, KEXEC_LOAD_LIMIT_REBOOT))
        return kexec_file_load_available(machine, sysroot=sysroot, syscall=fake)

    monkeypatch.setattr("kdumpd.daemon.backends.probe.kexec_file_load_available", available)
    root = _sysroot(tmp_path, "3")
    (root / "sys/kernel").mkdir(parents=True)
    (root / "sys/kernel/kexec_crash_loaded").write_text("0\n")
    (root / "sys/kernel/kexec_crash_size").write_text("268435456\n")
    probe_backend(root, euid=0, machine="x86_64")
    assert seen == [3] and fake.calls == []
