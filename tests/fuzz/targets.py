"""Fuzz targets: every reader of outside input, each fed through its real entry point.

========================  ==============================================================
target                    reader under test
========================  ==============================================================
``proc-iomem``            ``/proc/iomem`` -> topology -> elfcorehdr image
``sysfs-cpu``             cpulists, ``crash_notes``, ``crash_notes_size``, ``crash_hotplug``
``sysfs-memory``          ``block_size_bytes``, ``memoryN/{state,online,phys_index}``
``sysfs-kernel``          ``crash_elfcorehdr_size``, ``kexec_crash_size``,
                          ``kexec_crash_loaded``, ``vmcoreinfo``, lockdown, osrelease,
                          arch, ``/proc/kallsyms``, ``/proc/kcore``
``sysfs-ppc64le``         the ppc64le device tree ``/cpus`` properties and sizes (crash FDT)
``kdumpconf``             ``/etc/kdump.conf`` and ``/etc/sysconfig/kdump``
``toml-config``           ``/etc/kdumpd/kdumpd.toml`` (+ command-line overrides)
``environment``           ``KDUMPD_*`` variables (pydantic-settings), surrogate-escaped
``replay``                replay files (read, then applied below a scratch sysroot)
``uevent``                uevents as pyudev hands them to the udev source
``dbus``                  method calls with any interface/member/signature/body on a
                          private dbus-daemon, against the real ``org.kdumpd1`` object
========================  ==============================================================

Sysfs-type inputs are ``<relative path>\\n<content>``: the first line picks the file of
the target's group (an unknown path falls back to a fixed choice), the rest replaces
that file in a scratch copy of a captured sysroot, which is restored after the case.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.fuzz.engine import Result, Target, run_target

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
X86 = FIXTURES / "synthetic-x86_64-before"
PPC = FIXTURES / "guest-ppc64le-6.12-after"  # real: with /chosen cells and memory-limit


def _scratch_parent() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


@contextlib.contextmanager
def _scratch_copy(fixture: Path) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="kdumpd-fuzz-", dir=_scratch_parent()))
    try:
        root = tmp / "root"
        shutil.copytree(fixture, root, symlinks=True)
        yield root
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _split(data: bytes, group: Sequence[str]) -> tuple[str, bytes]:
    head, _, content = data.partition(b"\n")
    rel = head.decode("ascii", "replace")
    if rel not in group:
        rel = group[int.from_bytes(hashlib.sha256(head).digest()[:4], "little") % len(group)]
    return rel, content


def _topology_pipeline(root: Path) -> None:
    """What the daemon does with a sysroot: probe, read, size, build, publish."""
    from kdumpd.core.ranges import crash_memory_ranges
    from kdumpd.daemon.backends.probe import probe_backend
    from kdumpd.daemon.reconciler import default_image_factory
    from kdumpd.system.devicetree import read_memory_limit
    from kdumpd.system.kexecsysfs import read_capabilities, read_crash_loaded
    from kdumpd.system.sysroot import Sysroot
    from kdumpd.system.topologyreader import read_topology

    probe_backend(root)
    read_memory_limit(Sysroot(root))
    read_capabilities(root)
    read_crash_loaded(root)
    topology = read_topology(root)
    crash_memory_ranges(topology)
    default_image_factory()(topology)


def _file_target(
    name: str,
    fixture: Path,
    group: Sequence[str],
    tokens: tuple[bytes, ...] = (),
    pipeline: Callable[[Path], None] = _topology_pipeline,
) -> Target:
    missing = [g for g in group if not (fixture / g).exists()]
    if missing:
        raise FileNotFoundError(f"{fixture}: {missing}")

    def seeds() -> list[bytes]:
        return [g.encode() + b"\n" + (fixture / g).read_bytes() for g in group]

    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[bytes], int | None]]:
        with _scratch_copy(fixture) as root:
            originals = {g: (root / g).read_bytes() for g in group}

            def run(data: bytes) -> None:
                rel, content = _split(data, group)
                path = root / rel
                path.write_bytes(content)
                try:
                    pipeline(root)
                finally:
                    path.write_bytes(originals[rel])

            yield run

    return Target(name, setup, seeds, tokens)


_CPU = "sys/devices/system/cpu"
_MEM = "sys/devices/system/memory"


def _x86_cpu_group() -> list[str]:
    out = [f"{_CPU}/{n}" for n in ("possible", "present", "online", "offline", "kernel_max")]
    for d in sorted((X86 / _CPU).glob("cpu[0-9]*")):
        for f in ("crash_notes", "crash_notes_size", "online"):
            if (d / f).exists():
                out.append(f"{_CPU}/{d.name}/{f}")
    return [p for p in out if (X86 / p).exists()]


def _x86_memory_group() -> list[str]:
    out = [f"{_MEM}/block_size_bytes", f"{_MEM}/auto_online_blocks"]
    for d in sorted((X86 / _MEM).glob("memory[0-9]*"))[:4]:
        for f in ("state", "online", "phys_index"):
            out.append(f"{_MEM}/{d.name}/{f}")
    return [p for p in out if (X86 / p).exists()]


def _x86_kernel_group() -> list[str]:
    out = [
        "sys/kernel/crash_elfcorehdr_size",
        "sys/kernel/kexec_crash_size",
        "sys/kernel/kexec_crash_loaded",
        "sys/kernel/kexec_loaded",
        "sys/kernel/vmcoreinfo",
        "sys/kernel/security/lockdown",
        "proc/sys/kernel/osrelease",
        "proc/sys/kernel/arch",
        "proc/kallsyms",
        "proc/kcore",
    ]
    return [p for p in out if (X86 / p).exists()]


def _ppc_group() -> list[str]:
    cpus = "sys/firmware/devicetree/base/cpus"
    out = [
        "sys/kernel/crash_elfcorehdr_size",
        f"{_CPU}/possible",
        f"{_CPU}/present",
        "proc/iomem",
        "sys/firmware/devicetree/base/chosen/linux,crashkernel-base",
        "sys/firmware/devicetree/base/chosen/linux,crashkernel-size",
        "sys/firmware/devicetree/base/chosen/linux,memory-limit",
    ]
    nodes = sorted(p for p in (PPC / cpus).iterdir() if p.is_dir())[:2]
    for node in nodes:
        out += [str(f.relative_to(PPC)) for f in sorted(node.iterdir()) if f.is_file()][:12]
    return [p for p in out if (PPC / p).exists()]


_SYSFS_TOKENS = (
    b"0-",
    b"0-4095",
    b"0-65535",
    b"0-1000000",
    b"online\n",
    b"offline\n",
    b"going-offline\n",
    b"[none] integrity",
    b"System RAM",
    b"Crash kernel",
    b"Kernel code",
    b"  ",
    b"00000000-ffffffff : System RAM\n",
    b"100000000-fffffffffffffffff : System RAM\n",
)


# ----------------------------------------------------------------- configuration


def _kdumpconf_pipeline(root: Path) -> None:
    from kdumpd.system.kdumpconf import kexec_defaults, loader_inputs, read_kdump_conf

    read_kdump_conf(root)
    loader_inputs(root)
    kexec_defaults(root, append="irqpoll")


_KDUMP_CONF = b"""path /var/crash
core_collector makedumpfile -l --message-level 7 -d 31
failure_action reboot
final_action poweroff
ext4 UUID=0b3f-77aa
auto_reset_crashkernel yes
"""

_SYSCONFIG = b"""KDUMP_KERNELVER=""
KDUMP_COMMANDLINE=""
KDUMP_COMMANDLINE_REMOVE="hugepages hugepagesz slub_debug quiet log_buf_len swiotlb"
KDUMP_COMMANDLINE_APPEND="irqpoll nr_cpus=1 reset_devices cgroup_disable=memory"
export KEXEC_ARGS="-s"
KDUMP_BOOTDIR="/boot"
KDUMP_IMG="vmlinuz"
KDUMP_IMG_EXT="${KDUMP_IMG}.x"
"""


def _kdumpconf_target() -> Target:
    group = ("etc/kdump.conf", "etc/sysconfig/kdump", "proc/cmdline", "proc/sys/kernel/osrelease")
    seeds_by_path = {
        "etc/kdump.conf": _KDUMP_CONF,
        "etc/sysconfig/kdump": _SYSCONFIG,
        "proc/cmdline": b"BOOT_IMAGE=/vmlinuz root=/dev/vda1 crashkernel=256M quiet\n",
        "proc/sys/kernel/osrelease": b"6.1.0-50-amd64\n",
    }

    def seeds() -> list[bytes]:
        return [p.encode() + b"\n" + c for p, c in seeds_by_path.items()]

    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[bytes], int | None]]:
        tmp = Path(tempfile.mkdtemp(prefix="kdumpd-fuzz-", dir=_scratch_parent()))
        try:
            root = tmp / "root"
            for p, c in seeds_by_path.items():
                (root / p).parent.mkdir(parents=True, exist_ok=True)
                (root / p).write_bytes(c)
            (root / "boot").mkdir()
            (root / "boot/vmlinuz-6.1.0-50-amd64").write_bytes(b"k")

            def run(data: bytes) -> None:
                rel, content = _split(data, group)
                (root / rel).write_bytes(content)
                try:
                    _kdumpconf_pipeline(root)
                finally:
                    (root / rel).write_bytes(seeds_by_path[rel])

            yield run
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    tokens = (
        b"path ",
        b"raw /dev/sda",
        b"nfs host:/x",
        b"default shell",
        b"net x",
        b"$(id)",
        b"`id`",
        b"${KDUMP_IMG:-x}",
        b"${",
        b"$KDUMP_BOOTDIR",
        b"export ",
        b"KDUMP_KERNELVER=",
        b"KDUMP_BOOTDIR=",
        b"KDUMP_COMMANDLINE_REMOVE=",
        b"crashkernel=",
    )
    return Target("kdumpconf", setup, seeds, tokens)


_TOML = (REPO / "docs" / "kdumpd.toml").read_bytes()
_TOML_TOKENS = (
    b"backend = ",
    b'"dry-run"',
    b"state_dir = ",
    b"[debounce]",
    b"[elfcorehdr]",
    b"[kexec]",
    b"quiet_ms = ",
    b"max_ms = ",
    b"max_cpus = ",
    b"max_ranges = ",
    b"true",
    b"1979-05-27T07:32:00Z",
    b"0x7fffffffffffffff",
    b"99999999999999999999",
    b"[[",
    b'"""',
    b"\\u0000",
    b"\\UFFFFFFFF",
    b"inf",
    b"nan",
    b"1.5",
    b"sysroot = ",
    b"dbus = ",
)


def _toml_target() -> Target:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[bytes], int | None]]:
        from kdumpd.config import load_settings

        tmp = Path(tempfile.mkdtemp(prefix="kdumpd-fuzz-", dir=_scratch_parent()))
        empty = tmp / "sysroot"
        empty.mkdir()
        try:
            path = tmp / "kdumpd.toml"

            def run(data: bytes) -> None:
                path.write_bytes(data)
                # The sysroot is pinned so the kdump-utils files read are the scratch
                # ones; overrides alternate to check that a bad file value is still
                # reported when the command line sets the same key.
                overrides: dict[str, Any] = {"sysroot": str(empty)}
                if data and data[0] & 1:
                    overrides["backend"] = "dry-run"
                    overrides["debounce"] = {"quiet_ms": 5}
                load_settings(path, overrides, env={})

            yield run
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def seeds() -> list[bytes]:
        return [
            _TOML,
            b'backend = "dry-run"\n[debounce]\nquiet_ms = 5\nmax_ms = 10\n',
            b'[kexec]\nkernel = "/boot/vmlinuz"\nappend = "irqpoll"\n',
            b"[elfcorehdr]\nmax_cpus = 64\nmax_ranges = 1024\n",
        ]

    return Target("toml-config", setup, seeds, _TOML_TOKENS)


_ENV_SEED = b"""KDUMPD_BACKEND=dry-run
KDUMPD_DEBOUNCE__QUIET_MS=50
KDUMPD_DEBOUNCE={"quiet_ms": 5, "max_ms": 10}
KDUMPD_ELFCOREHDR__MAX_CPUS=64
KDUMPD_KEXEC__APPEND=irqpoll nr_cpus=1
KDUMPD_DBUS=false
KDUMPD_EVENT_SOURCE=netlink
KDUMPD_STATE_DIR=/run/kdumpd
"""


def _environment_target() -> Target:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[bytes], int | None]]:
        from kdumpd.config import load_settings

        tmp = Path(tempfile.mkdtemp(prefix="kdumpd-fuzz-", dir=_scratch_parent()))
        (tmp / "kdumpd.toml").write_bytes(b"")
        try:

            def run(data: bytes) -> None:
                env: dict[str, str] = {}
                for raw in data.split(b"\n"):
                    key, eq, value = raw.partition(b"=")
                    if not eq or not key or b"\x00" in raw:
                        continue  # execve() cannot pass these
                    # os.environ decodes with the file-system encoding and
                    # surrogateescape: undecodable bytes arrive as lone surrogates.
                    env[os.fsdecode(key)] = os.fsdecode(value)
                # a sysroot from the environment must not read the host's files
                env["KDUMPD_SYSROOT"] = str(tmp)
                load_settings(tmp / "kdumpd.toml", {}, env=env)

            yield run
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    tokens = (
        b"KDUMPD_",
        b"KDUMPD_DEBOUNCE=",
        b"KDUMPD_KEXEC=",
        b"KDUMPD_ELFCOREHDR=",
        b"__",
        b'{"max_ranges": 99999999999999999999999}',
        b"[1,2]",
        b"null",
        b"\n",
    )
    return Target("environment", setup, lambda: [_ENV_SEED], tokens)


# ------------------------------------------------------------------------- replay

_REPLAY_SEED = (
    b'{"at": 0.25, "action": "online", "subsystem": "memory", '
    b'"devpath": "/devices/system/memory/memory42", "seqnum": 1234, '
    b'"files": {"proc/iomem": "00001000-0009fbff : System RAM\\n", '
    b'"sys/devices/system/memory/memory42/online": "1\\n"}}\n'
    b"# a comment\n"
    b'{"at": 1, "action": "add", "subsystem": "cpu", "devpath": "/devices/system/cpu/cpu3"}\n'
    b'{"action": "offline", "subsystem": "cpu", "devpath": "/devices/system/cpu/cpu3",'
    b' "files": {"sys/devices/system/cpu/online": "0-2\\n"}}\n'
)


def _replay_target() -> Target:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[bytes], int | None]]:
        from kdumpd.events.replay import Replayer, read_replay

        tmp = Path(tempfile.mkdtemp(prefix="kdumpd-fuzz-", dir=_scratch_parent()))
        loop = asyncio.new_event_loop()
        logging.getLogger("kdumpd.events.replay").disabled = True
        count = 0
        try:
            path = tmp / "replay.jsonl"
            sysroot = tmp / "sysroot"
            sysroot.mkdir()

            def run(data: bytes) -> int:
                nonlocal count
                count += 1
                if count % 500 == 0:  # keep the scratch sysroot small
                    shutil.rmtree(sysroot, ignore_errors=True)
                    sysroot.mkdir()
                path.write_bytes(data)
                replayer = Replayer(sysroot, lambda _ev: None, speed=0)
                stats = loop.run_until_complete(replayer.run(read_replay(path, replayer.stats)))
                if stats.skipped != len(stats.errors):
                    raise AssertionError("skipped lines and logged errors disagree")
                return stats.skipped

            yield run
        finally:
            loop.close()
            logging.getLogger("kdumpd.events.replay").disabled = False
            shutil.rmtree(tmp, ignore_errors=True)

    tokens = (
        b'"at": ',
        b'"files": {',
        b'"seqnum": ',
        b'"devpath": "/devices/system/memory/memory',
        b'"sys/devices/system/cpu/',
        b'"proc/../../etc/passwd"',
        b'"/etc/passwd"',
        b'"a\\u0000b"',
        b"1e999",
        b"-1e-999",
        b"[]",
        b"null",
        b"true",
        b"\xff\xfe",
    )
    return Target("replay", setup, lambda: [_REPLAY_SEED], tokens)


# ------------------------------------------------------------------------- uevent


class _FakeDevice:
    """What pyudev's ``Device`` gives the udev source: attributes decoded from the
    uevent's bytes with the file-system encoding, strictly (pyudev's
    ``ensure_unicode_string``), so undecodable bytes raise on access."""

    def __init__(self, fields: list[bytes]) -> None:
        self._f = (fields + [b""] * 4)[:4]

    @staticmethod
    def _text(raw: bytes) -> str | None:
        return None if raw == b"\xc0" else raw.decode(sys.getfilesystemencoding())

    @property
    def action(self) -> str | None:
        return self._text(self._f[0])

    @property
    def subsystem(self) -> str | None:
        return self._text(self._f[1])

    @property
    def device_path(self) -> str:
        return self._f[2].decode(sys.getfilesystemencoding())

    @property
    def properties(self) -> dict[str, str]:
        seq = self._f[3]
        return {} if seq == b"-" else {"SEQNUM": seq.decode(sys.getfilesystemencoding())}


class _FakeMonitor:
    def __init__(self) -> None:
        self.queue: list[_FakeDevice] = []

    def poll(self, _timeout: float) -> _FakeDevice | None:
        return self.queue.pop(0) if self.queue else None

    def fileno(self) -> int:
        return -1


def _uevent_target() -> Target:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[bytes], int | None]]:
        from kdumpd.events.udev import UdevSource

        logging.getLogger("kdumpd.events.udev").disabled = True
        try:
            source = UdevSource(lambda _ev: None, source="netlink")
            monitor = _FakeMonitor()

            def run(data: bytes) -> int:
                for record in data.split(b"\x1e"):
                    monitor.queue.append(_FakeDevice(record.split(b"\x00")))
                source._monitor = monitor
                dropped = source.dropped
                source.drain()
                return source.dropped - dropped

            yield run
        finally:
            logging.getLogger("kdumpd.events.udev").disabled = False

    seeds = [
        b"online\x00memory\x00/devices/system/memory/memory42\x001234",
        b"add\x00cpu\x00/devices/system/cpu/cpu3\x0099\x1eoffline\x00cpu\x00"
        b"/devices/system/cpu/cpu3\x00-",
        b"change\x00memory\x00/devices/system/memory\x00",
    ]
    tokens = (b"\x00", b"\x1e", b"\xc0", b"/devices/system/cpu/", b"memory", b"cpu", b"/../")
    return Target("uevent", setup, lambda: seeds, tokens)


# --------------------------------------------------------------------------- D-Bus

_DBUS_ALLOWED_ERRORS = frozenset(
    {
        "org.kdumpd1.Error.AccessDenied",
        "org.kdumpd1.Error.Busy",
        "org.kdumpd1.Error.Failed",
        "org.freedesktop.DBus.Error.InvalidArgs",
        "org.freedesktop.DBus.Error.UnknownMethod",
        "org.freedesktop.DBus.Error.UnknownInterface",
        "org.freedesktop.DBus.Error.UnknownObject",
        "org.freedesktop.DBus.Error.UnknownProperty",
        "org.freedesktop.DBus.Error.PropertyReadOnly",
        "org.freedesktop.DBus.Error.AccessDenied",
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NotSupported",
    }
)


class DBusFinding(AssertionError):
    """A D-Bus reply outside the documented contract (a finding, not a KdumpdError)."""


def _random_signature(rng: random.Random, depth: int = 0) -> str:
    basic = "ybnqiuxtdsogh"
    r = rng.random()
    if depth > 2 or r < 0.7:
        return rng.choice(basic)
    if r < 0.8:
        return "a" + _random_signature(rng, depth + 1)
    if r < 0.9:
        return "a{" + rng.choice("sisu") + _random_signature(rng, depth + 1) + "}"
    if r < 0.95:
        return "v"
    fields = (_random_signature(rng, depth + 1) for _ in range(rng.randrange(1, 4)))
    return "(" + "".join(fields) + ")"


def _random_value(rng: random.Random, sig: str) -> Any:
    from dbus_fast import SignatureTree, Variant

    c = sig[0]
    if c in "ybnqiuxth":
        bits = {"y": 8, "b": 1, "n": 16, "q": 16, "i": 32, "u": 32, "x": 64, "t": 64, "h": 0}[c]
        if c == "b":
            return rng.random() < 0.5
        if c == "h":
            return 0
        signed = c in "nix"
        lo = -(1 << (bits - 1)) if signed else 0
        hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
        return rng.choice((lo, hi, 0, 1, rng.randint(lo, hi)))
    if c == "d":
        return rng.choice((0.0, -1.5, float("inf"), float("nan"), 1e308))
    if c == "s":
        return rng.choice(("", "x" * rng.randrange(0, 5000), "Reload", "\u00e9\u2603", "a\tb"))
    if c == "o":
        return rng.choice(("/", "/org/kdumpd1", "/a/b_c"))
    if c == "g":
        return rng.choice(("", "s", "a{sv}", "(ii)"))
    if c == "v":
        inner = _random_signature(rng, 2)
        return Variant(inner, _random_value(rng, inner))
    if sig == "ay":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 8)))
    if c == "a":
        tree = SignatureTree(sig)
        child = tree.types[0].children[0]
        if child.token == "{":
            k, v = child.children
            return {
                _random_value(rng, k.signature): _random_value(rng, v.signature)
                for _ in range(rng.randrange(0, 4))
            }
        return [_random_value(rng, child.signature) for _ in range(rng.randrange(0, 4))]
    if c == "(":
        tree = SignatureTree(sig)
        return [_random_value(rng, ch.signature) for ch in tree.types[0].children]
    raise ValueError(sig)


def _dbus_target() -> Target:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[bytes], int | None]]:
        from dbus_fast import Message, MessageType
        from dbus_fast.aio import MessageBus

        from kdumpd.core.errors import KdumpdError as Kerr
        from kdumpd.daemon.control import Busy
        from kdumpd.daemon.state import StateStore
        from kdumpd.interfaces.dbus import BUS_NAME, OBJECT_PATH, serve
        from tests.integration.dbusbus import start_bus

        class Controller:
            def __init__(self) -> None:
                self.rng = random.Random(0)

            async def _op(self) -> None:
                r = self.rng.random()
                if r < 0.2:
                    raise Busy("Unload", "a load")
                if r < 0.4:
                    raise Kerr("/boot/vmlinuz: missing")

            reload = rescan = load = unload = _op

            async def report(self) -> dict[str, Any]:
                await self._op()
                return {"state": "loaded", "n": self.rng.randrange(1 << 70)}

        errors: list[logging.LogRecord] = []

        class Catch(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.levelno >= logging.ERROR:
                    errors.append(record)

        catch = Catch()
        logging.getLogger("kdumpd").addHandler(catch)
        logging.getLogger("kdumpd.interfaces.dbus").propagate = True
        bus = start_bus(permissive=True)
        loop = asyncio.new_event_loop()
        controller = Controller()
        uid = {"next": 0}

        async def lookup(_sender: str) -> int:
            return uid["next"]

        async def start() -> tuple[Any, Any]:
            service = await serve(bus.address, StateStore(), controller, uid_lookup=lookup)
            client = await MessageBus(bus_address=bus.address).connect()
            return service, client

        service, client = loop.run_until_complete(start())
        valid = (
            ("org.kdumpd1.Manager", "Reload", ""),
            ("org.kdumpd1.Manager", "Rescan", ""),
            ("org.kdumpd1.Manager", "Load", ""),
            ("org.kdumpd1.Manager", "Unload", ""),
            ("org.kdumpd1.Manager", "GetReport", ""),
            ("org.freedesktop.DBus.Properties", "Get", "ss"),
            ("org.freedesktop.DBus.Properties", "GetAll", "s"),
            ("org.freedesktop.DBus.Properties", "Set", "ssv"),
            ("org.freedesktop.DBus.Introspectable", "Introspect", ""),
            ("org.freedesktop.DBus.Peer", "Ping", ""),
            ("org.freedesktop.DBus.Peer", "GetMachineId", ""),
            ("org.freedesktop.DBus.ObjectManager", "GetManagedObjects", ""),
        )
        # ordered (dict, not set): the same input must make the same call in any process
        interfaces = (*dict.fromkeys(v[0] for v in valid), "org.kdumpd1.Nope", None)
        members = (*dict.fromkeys(v[1] for v in valid), "Frobnicate")

        def run(data: bytes) -> int:
            rng = random.Random(data)
            controller.rng = random.Random(data + b"c")
            uid["next"] = rng.choice((0, 0, 1000, 65534))
            interface, member, sig = rng.choice(valid)
            if rng.random() < 0.2:
                interface = rng.choice(interfaces)
            if rng.random() < 0.2:
                member = rng.choice(members)
            if rng.random() < 0.3:
                nargs = rng.choice((0, 1, 1, 2, 3))
                sig = "".join(_random_signature(rng) for _ in range(nargs))
            try:
                body = [_random_value(rng, t.signature) for t in _sig_types(sig)]
                if sig in ("s", "ss", "ssv") and rng.random() < 0.8:
                    body[0] = rng.choice(("org.kdumpd1.Manager", "", "org.x"))
                if sig in ("ss", "ssv") and rng.random() < 0.8:
                    body[1] = rng.choice(("State", "Generation", "Nope", "LastError", ""))
                msg = Message(
                    destination=BUS_NAME,
                    path=OBJECT_PATH if rng.random() < 0.9 else rng.choice(("/", "/org")),
                    interface=interface,
                    member=member,
                    signature=sig,
                    body=body,
                )
                msg._marshall(False)
            except Exception:
                return  # the client library refused to build it; nothing was sent
            reply = loop.run_until_complete(asyncio.wait_for(client.call(msg), 10))
            if errors:
                record = errors.pop()
                errors.clear()
                exc = record.exc_info[1] if record.exc_info else None
                raise DBusFinding(
                    f"service logged an error: {record.getMessage()[:200]} ({exc!r:.200})"
                )
            if reply is None:
                raise DBusFinding("no reply")
            if reply.message_type == MessageType.ERROR:
                if reply.error_name not in _DBUS_ALLOWED_ERRORS:
                    raise DBusFinding(f"undocumented error {reply.error_name}")
                text = str(reply.body[0]) if reply.body else ""
                if "internal error" in text or "\n" in text:
                    raise DBusFinding(f"{reply.error_name}: {text[:200]}")
                return 1
            return 0

        try:
            yield run
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(service.stop())  # logs the denial summary
            logging.getLogger("kdumpd").removeHandler(catch)
            client.disconnect()
            loop.close()
            bus.stop()

    def seeds() -> list[bytes]:
        return [bytes([i]) * 8 for i in range(16)]

    return Target("dbus", setup, seeds)


def _sig_types(sig: str) -> list[Any]:
    from dbus_fast import SignatureTree

    return list(SignatureTree(sig).types) if sig else []


# ------------------------------------------------------------------------- registry


def all_targets() -> dict[str, Callable[[], Target]]:
    return {
        "proc-iomem": lambda: _file_target("proc-iomem", X86, ["proc/iomem"], _SYSFS_TOKENS),
        "sysfs-cpu": lambda: _file_target("sysfs-cpu", X86, _x86_cpu_group(), _SYSFS_TOKENS),
        "sysfs-memory": lambda: _file_target(
            "sysfs-memory", X86, _x86_memory_group(), _SYSFS_TOKENS
        ),
        "sysfs-kernel": lambda: _file_target(
            "sysfs-kernel", X86, _x86_kernel_group(), _SYSFS_TOKENS
        ),
        "sysfs-ppc64le": lambda: _file_target("sysfs-ppc64le", PPC, _ppc_group(), _SYSFS_TOKENS),
        "kdumpconf": _kdumpconf_target,
        "toml-config": _toml_target,
        "environment": _environment_target,
        "replay": _replay_target,
        "uevent": _uevent_target,
        "dbus": _dbus_target,
    }


def run_named(name: str, cases: int, seed: int, time_limit: float, budget: float) -> Result:
    """Run target ``name`` (a top-level function, so a worker process can import it)."""
    return run_target(
        all_targets()[name](), cases=cases, seed=seed, time_limit=time_limit, max_seconds=budget
    )
