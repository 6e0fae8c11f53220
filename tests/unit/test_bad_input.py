"""Inputs the fuzz suite found escaping as other exceptions than kdumpd's own
one-line errors: each case here failed before its fix."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from kdumpd.config import load_settings
from kdumpd.core.errors import InputError, KdumpdError
from kdumpd.events.event import HotplugEvent, event_from_fields
from kdumpd.events.replay import Replayer, read_replay
from kdumpd.events.udev import UdevSource
from kdumpd.system.kdumpconf import kexec_defaults

GOOD = (
    '{"action": "online", "subsystem": "memory", '
    '"devpath": "/devices/system/memory/memory1", "files": {"x/y": "1\\n"}}\n'
)


def _replay(tmp_path: Path, raw: bytes) -> tuple[list[HotplugEvent], Replayer]:
    path = tmp_path / "r.jsonl"
    path.write_bytes(raw)
    sysroot = tmp_path / "root"
    sysroot.mkdir(exist_ok=True)
    got: list[HotplugEvent] = []
    replayer = Replayer(sysroot, got.append, speed=0)
    asyncio.run(replayer.run(read_replay(path, replayer.stats)))
    return got, replayer


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (b'{"action": "online\xff"}\n', "not valid UTF-8 (byte 0xff at column 19)"),
        (b'{"at": ' + b"9" * 5000 + b"}\n", "integer with 5000 digits"),
        (b'{"seqnum": ' + b"1" * 25 + b"}\n", "integer with 25 digits"),
        (b"[" * 100_000 + b"\n", "not JSON"),
        (
            b'{"action": "online", "subsystem": "memory", "devpath": '
            b'"/devices/system/memory/memory1", "files": {"a\\ud800": "1"}}\n',
            "lone surrogate",
        ),
        (
            b'{"action": "online", "subsystem": "memory", "devpath": '
            b'"/devices/system/memory/memory1", "files": {"a": "\\udfff"}}\n',
            "lone surrogate",
        ),
        (
            b'{"action": "online", "subsystem": "memory", "devpath": '
            b'"/devices/system/memory/memory1", "files": {"' + b"a/" * 3000 + b'b": "1"}}\n',
            "longer than 4096",
        ),
        (
            b'{"action": "online", "subsystem": "memory", "devpath": '
            b'"/devices/system/memory/memory1", "files": {"' + b"a/" * 100 + b'b": "1"}}\n',
            "deeper than 64",
        ),
        (
            b'{"action": "online", "subsystem": "memory", "devpath": '
            b'"/devices/system/memory/memory1\\ud800"}\n',
            "is malformed",
        ),
    ],
)
def test_a_bad_replay_line_is_logged_counted_skipped_and_the_replay_goes_on(
    tmp_path: Path, bad: bytes, needle: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="kdumpd.events.replay"):
        got, replayer = _replay(tmp_path, GOOD.encode() + bad + GOOD.encode())
    assert len(got) == 2
    assert replayer.stats.skipped == 1
    (error,) = replayer.stats.errors
    assert ":2: " in error and needle in error and "\n" not in error
    assert [r.getMessage() for r in caplog.records] == [error]


@pytest.mark.parametrize(
    "seqnum", ["1234\u00b2", "9" * 5000, str(1 << 64), "\u0663", "-1"], ids=repr
)
def test_seqnum_that_is_not_a_u64_in_ascii_digits_is_an_input_error(seqnum: str) -> None:
    with pytest.raises(InputError, match="seqnum"):
        event_from_fields("add", "cpu", "/devices/system/cpu/cpu1", seqnum)


class _Device:
    action = "add"
    subsystem = "cpu"
    properties: dict[str, str] = {}

    @property
    def device_path(self) -> str:
        return b"/devices/system/cpu/cpu\xff".decode()  # what pyudev does with bad bytes


class _Monitor:
    def __init__(self, devices: list[object]) -> None:
        self.devices = devices

    def poll(self, _timeout: float) -> object | None:
        return self.devices.pop(0) if self.devices else None


def test_a_uevent_field_that_is_not_utf8_is_dropped_not_raised() -> None:
    got: list[HotplugEvent] = []
    source = UdevSource(got.append, source="netlink")

    class Good:
        action, subsystem, device_path = "add", "cpu", "/devices/system/cpu/cpu1"
        properties = {"SEQNUM": "7"}

    source._monitor = _Monitor([_Device(), Good()])
    source.drain()
    assert source.dropped == 1
    assert [e.seqnum for e in got] == [7]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'backend = "dry-run"\nstate_dir = "/run/\xff"\n', ":2: not valid UTF-8 (byte 0xff)"),
        (b"[debounce]\nquiet_ms = " + b"9" * 5000 + b"\n", "Exceeds the limit (4300 digits)"),
        (b"x = " + b"[" * 5000 + b"\n", "not valid TOML"),
    ],
)
def test_toml_that_python_cannot_parse_is_one_input_error(
    tmp_path: Path, raw: bytes, needle: str
) -> None:
    cfg = tmp_path / "kdumpd.toml"
    cfg.write_bytes(raw)
    with pytest.raises(InputError) as info:
        load_settings(cfg, {"sysroot": str(tmp_path)}, env={})
    text = str(info.value)
    assert text.startswith(str(cfg)) and needle in text and "\n" not in text


def test_over_long_config_path_names_the_path_and_the_reason(tmp_path: Path) -> None:
    long = tmp_path / ("x" * 300)
    with pytest.raises(InputError, match="File name too long"):
        load_settings(long, {}, env={})


@pytest.mark.parametrize(
    ("toml", "override"),
    [
        ('backend = "kexec-please"\n', {"backend": "dry-run"}),
        ("[debounce]\nquiet_ms = -5\n", {"debounce": {"quiet_ms": 5}}),
        ("dbus = 'maybe'\n", {"dbus": False}),
    ],
)
def test_a_bad_file_value_is_reported_even_when_the_command_line_overrides_it(
    tmp_path: Path, toml: str, override: dict[str, object]
) -> None:
    cfg = tmp_path / "kdumpd.toml"
    cfg.write_text(toml)
    with pytest.raises(InputError) as info:
        load_settings(cfg, {"sysroot": str(tmp_path), **override}, env={})
    assert str(info.value).startswith(f"{cfg}: ")


def test_cross_field_checks_still_see_every_layer(tmp_path: Path) -> None:
    """max_ms >= quiet_ms may be completed by another layer: not a file error."""
    cfg = tmp_path / "kdumpd.toml"
    cfg.write_text("[debounce]\nquiet_ms = 5000\n")
    s = load_settings(cfg, {"sysroot": str(tmp_path)}, env={"KDUMPD_DEBOUNCE__MAX_MS": "9000"})
    assert (s.debounce.quiet_ms, s.debounce.max_ms) == (5000, 9000)


@pytest.mark.parametrize(
    ("sysconfig", "osrelease", "needle"),
    [
        (f'KDUMP_KERNELVER="{"v" * 300}"\n', "6.1\n", "File name too long"),
        ("KDUMP_IMG=" + "i" * 300 + "\n", "6.1\nx\n", "\\n"),
    ],
)
def test_kdump_utils_paths_the_kernel_refuses_are_one_input_error(
    tmp_path: Path, sysconfig: str, osrelease: str, needle: str
) -> None:
    (tmp_path / "etc/sysconfig").mkdir(parents=True)
    (tmp_path / "etc/sysconfig/kdump").write_text(sysconfig)
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/osrelease").write_text(osrelease)
    (tmp_path / "boot").mkdir()
    with pytest.raises(KdumpdError) as info:
        kexec_defaults(tmp_path)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_error_text_escapes_control_characters_and_bounds_the_name() -> None:
    err = InputError("/etc/x\ny" + "z" * 5000, "bad\rvalue \ud800", 3)
    text = str(err)
    assert "\n" not in text and "\r" not in text and "\\ud800" in text
    assert len(text) < 700


# ------------------------------------------------------------------ sysfs values

X86 = Path(__file__).resolve().parents[1] / "fixtures/synthetic-x86_64-before"


def _tree(tmp_path: Path, rel: str, content: str) -> Path:
    import shutil

    root = tmp_path / "root"
    shutil.copytree(X86, root)
    (root / rel).write_text(content)
    return root


@pytest.mark.parametrize(
    ("rel", "content", "needle"),
    [
        ("sys/devices/system/cpu/possible", "0-" + "9" * 5000 + "\n", "is above 65535"),
        ("sys/devices/system/cpu/present", "9" * 5000 + "\n", "is above 65535"),
        ("sys/devices/system/cpu/online", "0-\u00b2\n", "non-ASCII byte"),
        ("sys/kernel/crash_elfcorehdr_size", "9" * 5000 + "\n", "a number of 5000 digits"),
        ("sys/kernel/crash_elfcorehdr_size", "4294967296\n", "more than 32 bits"),
        ("sys/kernel/kexec_crash_size", "18446744073709551616\n", "more than 64 bits"),
        ("sys/devices/system/memory/block_size_bytes", "f" * 5000 + "\n", "5000 digits"),
    ],
)
def test_huge_sysfs_numbers_fail_in_the_range_check_not_in_int(
    tmp_path: Path, rel: str, content: str, needle: str
) -> None:
    from kdumpd.system.kexecsysfs import read_capabilities
    from kdumpd.system.topologyreader import read_topology

    root = _tree(tmp_path, rel, content)
    with pytest.raises(InputError) as info:
        read_capabilities(root)
        read_topology(root)
    assert needle in str(info.value) and f"/{rel}" in str(info.value)


_BUILD_UNDER_1_GIB = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from kdumpd.core.errors import KdumpdError
from kdumpd.daemon.reconciler import default_image_factory
from kdumpd.system.topologyreader import read_topology
topology = read_topology(sys.argv[1])
try:
    default_image_factory()(topology)
except KdumpdError as err:
    print(err)
"""


def test_a_1_5_gb_crash_elfcorehdr_size_is_refused_before_it_is_allocated(
    tmp_path: Path,
) -> None:
    """Run with a 1 GiB address-space limit: allocating the buffer would be a
    MemoryError; bounding it by the crash reservation first is one error line."""
    import os
    import subprocess
    import sys

    root = _tree(tmp_path, "sys/kernel/crash_elfcorehdr_size", f"{1536 << 20}\n")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", _BUILD_UNDER_1_GIB, str(root)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("elfcorehdr placement in Crash kernel 0x")
    assert "needs 1610616832 bytes" in proc.stdout


def test_segment_sizes_are_bounded_by_the_crash_reservation(tmp_path: Path) -> None:
    import dataclasses

    from kdumpd.core.errors import TooLargeError
    from kdumpd.core.image import check_segment_size
    from kdumpd.core.topology import Resource
    from kdumpd.system.topologyreader import read_topology

    topology = read_topology(X86)
    (crash,) = topology.crashkernel
    check_segment_size("elfcorehdr", crash.size if crash.size < 64 << 20 else 4096, topology)
    small = dataclasses.replace(
        topology,
        iomem=tuple(
            Resource(r.start, r.start + (1 << 20) - 1, r.name, r.depth)
            if r.name == "Crash kernel"
            else r
            for r in topology.iomem
        ),
    )
    with pytest.raises(TooLargeError, match="largest crash kernel reservation"):
        check_segment_size("elfcorehdr", (1 << 20) + 8, small)
