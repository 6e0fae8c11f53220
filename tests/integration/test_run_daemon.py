"""`kdumpd run` as a real process: sd_notify, watchdog, SIGHUP, SIGTERM, adoption."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kdumpd.config import Settings, load_settings
from kdumpd.core.errors import InputError
from kdumpd.events.event import HotplugEvent
from kdumpd.service import Daemon

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests/fixtures/guest-6.1-before"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[dict[str, str], socket.socket, Path]]:
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(20)
    e = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    e.update(NOTIFY_SOCKET=str(path), PYTHONPATH=str(REPO))
    yield e, sock, tmp_path
    sock.close()


def start(e: dict[str, str], tmp: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kdumpd.cli",
            "run",
            "--sysroot",
            str(tmp / "root"),
            "--state-dir",
            str(tmp / "state"),
            "--backend",
            "dry-run",
            "--no-dbus",
            *extra,
        ],
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def recv_until(sock: socket.socket, needle: str, limit: float = 20) -> list[str]:
    got: list[str] = []
    end = time.monotonic() + limit
    while time.monotonic() < end:
        msg = sock.recv(4096).decode()
        got.append(msg)
        if needle in msg:
            return got
    raise AssertionError(f"{needle!r} not received; got {got}")


def loads(tmp: Path) -> list[dict[str, object]]:
    lines = (tmp / "state/loads.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def test_ready_watchdog_sighup_sigterm_and_adoption(
    env: tuple[dict[str, str], socket.socket, Path],
) -> None:
    e, sock, tmp = env
    cfg = tmp / "kdumpd.toml"
    cfg.write_text("[debounce]\nquiet_ms = 20\n")
    e2 = dict(e, WATCHDOG_USEC="200000")
    p = start(e2, tmp, "--config", str(cfg))
    try:
        msgs = recv_until(sock, "READY=1")
        assert "gen 1" in msgs[-1] and "loaded" in msgs[-1]
        recv_until(sock, "WATCHDOG=1", limit=2)
        # a broken config on SIGHUP: the running one is kept, the daemon stays up
        cfg.write_text("[debounce]\nquiet_ms = 'soon'\n")
        p.send_signal(signal.SIGHUP)
        recv_until(sock, "READY=1")
        assert p.poll() is None
        # a good config on SIGHUP: reloads the image (one more load)
        cfg.write_text("[debounce]\nquiet_ms = 30\n")
        p.send_signal(signal.SIGHUP)
        recv_until(sock, "gen 2")
        p.send_signal(signal.SIGTERM)
        _out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    assert "keeping the running configuration" in err and str(cfg) in err
    assert "Traceback" not in err
    assert [x.get("load") for x in loads(tmp)] == [1, 2]
    # restart: the recorded image is adopted, no new load
    sock.setblocking(False)
    while True:
        try:
            sock.recv(4096)
        except BlockingIOError:
            break
    sock.settimeout(20)
    p = start(e, tmp)
    try:
        msgs = recv_until(sock, "READY=1")
        assert "gen 2" in msgs[-1]
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert "adopting the loaded crash image of generation 2" in err
    assert [x.get("load") for x in loads(tmp)] == [1, 2]


def test_bad_config_is_one_line_exit_1(env: tuple[dict[str, str], socket.socket, Path]) -> None:
    e, _, tmp = env
    cfg = tmp / "bad.toml"
    cfg.write_text('event_source = "warp"\n')
    p = start(e, tmp, "--config", str(cfg))
    _, err = p.communicate(timeout=20)
    assert p.returncode == 1
    assert err.count("\n") == 1 and f"{cfg}: event_source:" in err


# ---------------------------------------------------------------- in-process Daemon
def daemon_settings(tmp: Path, **extra: object) -> Settings:
    root = tmp / "root"
    if not root.exists():
        shutil.copytree(FIXTURE, root)
    over: dict[str, object] = {
        "sysroot": str(root),
        "state_dir": str(tmp / "state"),
        "backend": "dry-run",
        "dbus": False,
        "debounce": {"quiet_ms": 5, "max_ms": 50},
    }
    over.update(extra)
    return load_settings(None, over, env={})


class FakeSource:
    """An event source that delivers one event the moment it starts."""

    def __init__(self, sink: Callable[[HotplugEvent], None], daemon: Daemon) -> None:
        self.sink = sink
        self.daemon = daemon
        self.loads_at_start: int | None = None
        self.stopped = False

    def start(self) -> None:
        self.loads_at_start = self.daemon.store.current.loads
        self.sink(HotplugEvent("online", "memory", "/devices/system/memory/memory512"))

    def stop(self) -> None:
        self.stopped = True


async def wait_for(cond: Callable[[], bool], limit: float = 10.0) -> None:
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.01)


async def test_event_source_starts_before_the_first_load(tmp_path: Path) -> None:
    sources: list[FakeSource] = []
    d: Daemon

    def factory(sink: Callable[[HotplugEvent], None], _s: Settings) -> FakeSource:
        sources.append(FakeSource(sink, d))
        return sources[-1]

    d = Daemon(daemon_settings(tmp_path), source_factory=factory, env={})
    task = asyncio.create_task(d.run())
    await wait_for(lambda: d.reconciler is not None and d.store.current.loads >= 1)
    assert d.reconciler is not None
    await d.reconciler.settle()
    assert sources and sources[0].loads_at_start == 0, "hotplug events during start-up are lost"
    assert d.store.current.events_received == 1
    assert d._stop is not None
    d._stop.set()
    await task
    assert sources[0].stopped


async def test_reload_rereads_the_configuration(tmp_path: Path) -> None:
    cfg = tmp_path / "kdumpd.toml"
    cfg.write_text("[debounce]\nquiet_ms = 5\n")
    base = {
        "sysroot": str(tmp_path / "root"),
        "state_dir": str(tmp_path / "state"),
        "backend": "dry-run",
        "dbus": False,
    }
    shutil.copytree(FIXTURE, tmp_path / "root")
    d = Daemon(
        load_settings(cfg, base, env={}),
        config_path=cfg,
        overrides=base,
        env={},
        source_factory=lambda sink, s: FakeSource(sink, d),
    )
    task = asyncio.create_task(d.run())
    await wait_for(lambda: d.reconciler is not None and d.store.current.loads >= 1)
    rec = d.reconciler
    assert rec is not None
    await rec.settle()
    cfg.write_text("[debounce]\nquiet_ms = 40\nmax_ms = 400\n[elfcorehdr]\nmax_cpus = 64\n")
    await d.control.reload()  # what D-Bus Reload and `kdumpctl reload` call
    assert rec.debouncer.quiet == 0.04 and rec.debouncer.max_staleness == 0.4
    assert d.settings.elfcorehdr.max_cpus == 64
    assert d.store.current.last_trigger == "reload" and d.store.current.loads == 2
    # a bad file: InputError to the caller, nothing changes
    cfg.write_text("[debounce]\nquiet_ms = 'soon'\n")
    with pytest.raises(InputError, match=str(cfg)):
        await d.control.reload()
    assert rec.debouncer.quiet == 0.04 and d.store.current.loads == 2
    assert d._stop is not None
    d._stop.set()
    await task


async def test_sighup_with_a_bad_environment_still_sends_ready(
    env: tuple[dict[str, str], socket.socket, Path],
) -> None:
    e, _sock, tmp = env
    d = Daemon(
        daemon_settings(tmp),
        env={"NOTIFY_SOCKET": e["NOTIFY_SOCKET"]},
        source_factory=lambda sink, s: FakeSource(sink, d),
        load_config=lambda: load_settings(None, {}, env={"KDUMPD_DEBOUNCE": "{bad"}),
    )
    task = asyncio.create_task(d.run())
    await wait_for(lambda: d.notifier is not None and d.notifier.ready)
    assert d.notifier is not None and d.reconciler is not None
    await d.reconciler.settle()  # FakeSource's start-up event applied: no STATUS pending
    d.notifier.sent.clear()
    d.on_sighup()
    assert len(d._tasks) == 1  # the task is referenced until it is done
    await asyncio.gather(*d._tasks)
    sent = d.notifier.sent
    assert sent[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert int(sent[0].split("MONOTONIC_USEC=")[1]) > 0
    assert sent[-1].startswith("READY=1")
    assert not d._tasks
    assert d._stop is not None
    d._stop.set()
    await task


async def test_replay_refuses_the_live_system_and_real_backends(tmp_path: Path) -> None:
    replay = tmp_path / "r.jsonl"
    replay.write_text(
        '{"action": "online", "subsystem": "memory", '
        '"devpath": "/devices/system/memory/memory9", "files": {"replayed": "1"}}\n'
    )
    s = daemon_settings(tmp_path)
    live = s.model_copy(update={"sysroot": Path("/")})
    with pytest.raises(InputError, match="refusing to replay onto the live system"):
        await Daemon(live, replay=replay, exit_after_replay=True, env={}).run()
    for name in ("file", "kernel"):
        real = s.model_copy(update={"backend": name})
        with pytest.raises(InputError, match="dry-run backend only"):
            await Daemon(real, replay=replay, exit_after_replay=True, env={}).run()
    # refused before anything ran: nothing replayed, nothing loaded or recorded
    assert not (tmp_path / "root/replayed").exists() and not (tmp_path / "state").exists()
    auto = s.model_copy(update={"backend": "auto"})
    (tmp_path / "root/sys/kernel/kexec_crash_size").write_text("268435456\n")
    result = await Daemon(auto, replay=replay, exit_after_replay=True, env={}).run()
    assert result.state["backend"] == "dry-run"
    assert (tmp_path / "root/replayed").read_text() == "1" and result.replay is not None
    assert result.replay.delivered == 1


def test_run_replay_on_the_live_root_is_one_line_exit_1(
    env: tuple[dict[str, str], socket.socket, Path],
) -> None:
    e, _, tmp = env
    replay = tmp / "r.jsonl"
    replay.write_text(
        '{"action":"online","subsystem":"memory","devpath":"/devices/system/memory/memory9","files":{"sys/x":"1"}}\n'
    )
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdumpd.cli",
            "run",
            "--replay",
            str(replay),
            "--no-dbus",
            "--state-dir",
            str(tmp / "state"),
        ],
        env=e,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "refusing to replay onto the live system" in p.stderr
    assert not Path("/sys/x").exists()


class LoadingKexec:
    """A KexecSyscalls for the file/kernel back-ends: records calls and sets
    ``kexec_crash_loaded`` below the sysroot as the kernel would."""

    def __init__(self, root: Path, calls: list[bytes]) -> None:
        self.root = root
        self.calls = calls

    def file_load(self, kernel_fd: int, initrd_fd: int, cmdline: bytes, flags: int) -> None:
        self.calls.append(cmdline)
        (self.root / "sys/kernel/kexec_crash_loaded").write_text("1\n")


def crash_hotplug_sysroot(tmp_path: Path) -> Path:
    """The fixture with a kernel file, nothing loaded yet, and crash hotplug on."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    rel = (root / "proc/sys/kernel/osrelease").read_text().strip()
    (root / "boot").mkdir()
    (root / f"boot/vmlinuz-{rel}").write_bytes(b"MZ fake kernel")
    (root / "sys/kernel/kexec_crash_loaded").write_text("0\n")
    for sub in ("cpu", "memory"):
        (root / f"sys/devices/system/{sub}/crash_hotplug").write_text("1\n")
    return root


@pytest.mark.parametrize("backend", ["kernel", "file"])
async def test_reload_rebuilds_a_real_backend_and_a_bad_one_changes_nothing(
    tmp_path: Path, backend: str
) -> None:
    from kdumpd.core.errors import KdumpdError
    from kdumpd.daemon.backends.file import FileBackend
    from kdumpd.daemon.backends.kernel import KernelBackend
    from kdumpd.daemon.state import ImageState

    root = crash_hotplug_sysroot(tmp_path)
    cfg = tmp_path / "kdumpd.toml"
    cfg.write_text('[kexec]\ncmdline = "console=ttyS0"\n')
    base = {"sysroot": str(root), "state_dir": str(tmp_path / "state"), "backend": backend}
    base["dbus"] = False  # type: ignore[assignment]
    calls: list[bytes] = []
    d = Daemon(
        load_settings(cfg, base, env={}),
        config_path=cfg,
        overrides=base,
        env={},
        syscalls_factory=lambda: LoadingKexec(root, calls),  # type: ignore[arg-type,return-value]
        source_factory=lambda sink, s: FakeSource(sink, d),
    )
    task = asyncio.create_task(d.run())
    await wait_for(lambda: d.reconciler is not None and d.store.current.loads >= 1)
    rec = d.reconciler
    assert rec is not None
    await rec.settle()
    n = len(calls)
    first = rec.backend
    # a good new configuration: a new backend, the last good inputs and ownership carried
    cfg.write_text('[kexec]\ncmdline = "console=ttyS0 x=1"\n')
    await d.control.reload()
    assert rec.backend is not first and len(calls) == n + 1 and calls[-1].startswith(b"console")
    assert b"x=1" in calls[-1]
    loader = getattr(rec.backend, "loader", rec.backend)
    assert isinstance(loader, FileBackend) and loader.last_good is not None
    if isinstance(rec.backend, KernelBackend):
        assert rec.backend.own_file_load
    good_backend, good_settings = rec.backend, d.settings
    # parses, but the kernel is missing: the pre-check refuses, the old setup stays
    cfg.write_text('[kexec]\nkernel = "/boot/vmlinuz-missing"\ncmdline = "console=ttyS0"\n')
    with pytest.raises(KdumpdError, match="vmlinuz-missing"):
        await d.control.reload()
    assert rec.backend is good_backend and d.settings is good_settings
    assert d.store.current.state == ImageState.DEGRADED and len(calls) == n + 1
    # the retry loads (file) or keeps (kernel) with the old configuration, never the bad one
    rec.retry.cancel()
    rec.request("retry")
    await rec.settle()
    assert d.store.current.state == ImageState.LOADED
    assert all(b"x=1" in c for c in calls[n:])
    assert d._stop is not None
    d._stop.set()
    await task


async def test_sighup_cancelled_at_shutdown_sends_no_ready_after_stopping(
    env: tuple[dict[str, str], socket.socket, Path],
) -> None:
    e, _sock, tmp = env
    d = Daemon(
        daemon_settings(tmp),
        env={"NOTIFY_SOCKET": e["NOTIFY_SOCKET"]},
        source_factory=lambda sink, s: FakeSource(sink, d),
    )
    task = asyncio.create_task(d.run())
    await wait_for(lambda: d.notifier is not None and d.notifier.ready)
    assert d.notifier is not None and d.control is not None
    never = asyncio.Event()

    async def hanging_reload() -> None:
        await never.wait()

    d.control.reload = hanging_reload  # type: ignore[method-assign]
    d.on_sighup()
    await asyncio.sleep(0.01)  # the reload is running
    assert d._stop is not None
    d._stop.set()  # SIGTERM: run() sends STOPPING=1 and cancels the SIGHUP task
    await task
    await asyncio.sleep(0.01)
    sent = d.notifier.sent
    stop = max(i for i, m in enumerate(sent) if m.startswith("STOPPING=1"))
    assert not any("READY=1" in m for m in sent[stop:]), sent


async def test_kernel_log_line_reaches_the_reconciler_through_the_daemon(tmp_path: Path) -> None:
    """The composition: on a kernel with crash hotplug the daemon watches
    <sysroot>/dev/kmsg (here a FIFO) from before its first load; the kernel's
    skipped-update line printed later marks the image stale and loads once; without
    crash hotplug no watcher is started."""
    root = crash_hotplug_sysroot(tmp_path)
    (root / "dev").mkdir(exist_ok=True)
    os.mkfifo(root / "dev/kmsg")
    base = {
        "sysroot": str(root),
        "state_dir": str(tmp_path / "state"),
        "backend": "kernel",
        "dbus": False,
        "debounce": {"quiet_ms": 5, "max_ms": 50},
        "kexec": {"cmdline": "console=ttyS0"},
    }
    calls: list[bytes] = []
    d = Daemon(
        load_settings(None, base, env={}),
        env={},
        syscalls_factory=lambda: LoadingKexec(root, calls),  # type: ignore[arg-type,return-value]
        source_factory=lambda sink, s: FakeSource(sink, d),
    )
    task = asyncio.create_task(d.run())
    await wait_for(lambda: d.reconciler is not None and d.store.current.loads >= 1)
    rec = d.reconciler
    assert rec is not None
    await rec.settle()
    assert d._kernel_log is not None and len(calls) == 1
    w = os.open(root / "dev/kmsg", os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(
            w, b"6,900,5000000,-;crash hp: kexec_trylock() failed, kdump image may be inaccurate\n"
        )
        await wait_for(lambda: len(calls) == 2)
        await rec.settle()
    finally:
        os.close(w)
    s = d.store.current
    assert s.loads == 2 and s.last_trigger == "kernel log" and s.stale_reason == ""
    assert d._stop is not None
    d._stop.set()
    await task
    assert d._kernel_log is None or d._kernel_log.fd is None  # closed at stop
    # a kernel without crash hotplug (before 6.6) never prints the line: no watcher
    for sub in ("cpu", "memory"):
        (root / f"sys/devices/system/{sub}/crash_hotplug").unlink()
    d2 = Daemon(
        load_settings(None, {**base, "backend": "file", "state_dir": str(tmp_path / "s2")}, env={}),
        env={},
        syscalls_factory=lambda: LoadingKexec(root, calls),  # type: ignore[arg-type,return-value]
        source_factory=lambda sink, s: FakeSource(sink, d2),
    )
    task = asyncio.create_task(d2.run())
    await wait_for(lambda: d2.reconciler is not None and d2.store.current.loads >= 1)
    assert d2._kernel_log is None
    assert d2._stop is not None
    d2._stop.set()
    await task
