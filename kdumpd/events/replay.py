"""Replay recorded hotplug events against a sysroot (format: docs/replay-format.md).

One JSON object per line::

    {"at": 0.25, "action": "online", "subsystem": "memory",
     "devpath": "/devices/system/memory/memory42",
     "files": {"proc/iomem": "...", "sys/devices/system/memory/memory42/online": "1"}}

``files`` (paths relative to the sysroot) are written before the event is
delivered; ``at`` (seconds from the start) is honoured, scaled by ``speed``
(``speed == 0``: as fast as possible).  A bad line is logged once as
``FILE:LINE: problem`` and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from kdumpd.core.errors import InputError
from kdumpd.events.event import EventSink, HotplugEvent, event_from_fields

log = logging.getLogger("kdumpd.events.replay")


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    at: float
    action: str
    subsystem: str
    devpath: str
    files: tuple[tuple[str, str], ...] = ()
    seqnum: int | None = None
    source: str = field(default="", compare=False)  # replay file and line, for errors
    line: int = field(default=0, compare=False)

    def to_json(self) -> str:
        obj: dict[str, Any] = {
            "at": round(self.at, 6),
            "action": self.action,
            "subsystem": self.subsystem,
            "devpath": self.devpath,
        }
        if self.seqnum is not None:
            obj["seqnum"] = self.seqnum
        if self.files:
            obj["files"] = dict(self.files)
        return json.dumps(obj, separators=(",", ":"))


@dataclass(slots=True)
class ReplayStats:
    delivered: int = 0
    skipped: int = 0
    files_written: int = 0
    errors: list[str] = field(default_factory=list)


#: Longest path (bytes) and path component a replay may name: PATH_MAX and NAME_MAX.
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
#: Deepest path a replay may name (sysfs paths are about ten components deep).
MAX_PATH_DEPTH = 64
#: Directory descriptors a :class:`SysrootWriter` keeps open at most.
MAX_CACHED_DIRS = 512
#: Longest integer literal accepted in a replay line (a u64 has 20 digits).
MAX_INT_DIGITS = 20


def _utf8(text: str, what: str, source: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate (JSON ``"\\ud800"``) is an InputError."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(
            source, f"{what} has a lone surrogate {text[err.start]!r} at {err.start}"
        ) from None


def _check_rel_path(p: object, source: str) -> str:
    if not isinstance(p, str) or not p:
        raise InputError(source, f"file path {p!r} is not a non-empty string")
    raw = _utf8(p, "file path", source)
    pp = PurePosixPath(p)
    if pp.is_absolute() or ".." in pp.parts or "\x00" in p:
        raise InputError(
            source, f"file path {p[:80]!r} must be relative to the sysroot, without '..'"
        )
    if len(raw) > MAX_PATH_BYTES:
        raise InputError(source, f"file path of {len(raw)} bytes is longer than {MAX_PATH_BYTES}")
    if len(pp.parts) > MAX_PATH_DEPTH:
        raise InputError(source, f"file path is deeper than {MAX_PATH_DEPTH} components")
    if any(len(part.encode()) > MAX_NAME_BYTES for part in pp.parts):
        raise InputError(source, f"file path {p[:80]!r} has a name longer than {MAX_NAME_BYTES}")
    return str(pp)


def _json_int(text: str) -> int:
    """``json`` ``parse_int``: refuse a literal longer than any field can hold before
    ``int()`` sees it (Python refuses more than 4,300 digits with a ValueError, and a
    large one costs quadratic time)."""
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer with {len(text)} digits")
    return int(text)


def parse_record(line: str, source: str, lineno: int) -> ReplayRecord:
    """One JSON line → :class:`ReplayRecord`; InputError(source, problem, lineno)."""
    try:
        obj = json.loads(line, parse_int=_json_int)
    except json.JSONDecodeError as err:
        raise InputError(source, f"not JSON: {err.msg}", lineno) from None
    except (ValueError, RecursionError) as err:  # _json_int; nesting deeper than the stack
        raise InputError(source, f"not JSON: {str(err) or type(err).__name__}", lineno) from None
    if not isinstance(obj, dict):
        raise InputError(source, "not a JSON object", lineno)
    unknown = set(obj) - {"at", "action", "subsystem", "devpath", "files", "seqnum"}
    if unknown:
        raise InputError(source, f"unknown keys {sorted(unknown)}", lineno)
    at = obj.get("at", 0)
    if isinstance(at, bool) or not isinstance(at, int | float) or at < 0 or not math.isfinite(at):
        raise InputError(source, f"'at' must be a number >= 0, got {at!r}", lineno)
    where = f"{source}:{lineno}"
    try:
        ev = event_from_fields(
            obj.get("action"),
            obj.get("subsystem"),
            obj.get("devpath"),
            obj.get("seqnum"),
            source=where,
        )
        files_obj = obj.get("files", {})
        if not isinstance(files_obj, dict):
            raise InputError(where, "'files' must be an object of path -> content")
        files: list[tuple[str, str]] = []
        for k, v in files_obj.items():
            rel = _check_rel_path(k, where)
            if not isinstance(v, str):
                raise InputError(where, f"content of {k[:80]!r} must be a string")
            _utf8(v, f"content of {k[:80]!r}", where)
            files.append((rel, v))
    except InputError as err:
        raise InputError(source, err.problem, lineno) from None
    return ReplayRecord(
        float(at), ev.action, ev.subsystem, ev.devpath, tuple(files), ev.seqnum, source, lineno
    )


def _decode_line(raw: bytes, source: str, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        problem = f"not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})"
        raise InputError(source, problem, lineno) from None


def read_replay(path: str | Path, stats: ReplayStats | None = None) -> Iterator[ReplayRecord]:
    """Yield valid records of a replay file; bad lines (including lines that are not
    valid UTF-8) are logged and counted, not raised, and the lines after them are
    still read."""
    src = str(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - generator owns it
    except OSError as err:
        raise InputError(src, err.strerror or str(err)) from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = _decode_line(raw, src, lineno).strip()
                if not line or line.startswith("#"):
                    continue
                record = parse_record(line, src, lineno)
            except InputError as err:
                log.error("%s", err, extra={"REPLAY_FILE": src, "REPLAY_LINE": lineno})
                if stats is not None:
                    stats.skipped += 1
                    stats.errors.append(str(err))
                continue
            yield record


def write_replay(path: str | Path, records: Iterable[ReplayRecord]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(rec.to_json())
            fh.write("\n")
            n += 1
    return n


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class SysrootWriter:
    """Writes files below a sysroot and nowhere else: every component is opened
    relative to its parent's directory fd with ``O_NOFOLLOW``, so a symlink in the
    sysroot (``escape -> /outside``, or a captured ``proc/device-tree`` pointing at
    the live ``/sys/firmware/devicetree/base``) is refused, never followed.  Directory
    fds are cached for the writer's lifetime (a storm writes the same directories)."""

    def __init__(self, sysroot: str | Path) -> None:
        self.sysroot = os.fspath(sysroot)
        self._dirs: dict[str, int] = {}

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def __enter__(self) -> SysrootWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _dir(self, rel: str) -> int:
        """The directory fd of ``rel`` (created if needed), walking down from the
        nearest cached ancestor one component at a time (no recursion: a replay may
        name a path thousands of components deep)."""
        fd = self._dirs.get(rel)
        if fd is not None:
            return fd
        if len(self._dirs) > MAX_CACHED_DIRS:  # a replay naming many directories
            self.close()
        if "" not in self._dirs:
            self._dirs[""] = os.open(self.sysroot, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        parts = rel.split("/") if rel else []
        depth = len(parts)
        while depth > 0 and "/".join(parts[:depth]) not in self._dirs:
            depth -= 1
        for i in range(depth, len(parts)):
            pfd = self._dirs["/".join(parts[:i])]
            name = parts[i]
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=pfd)
                fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            self._dirs["/".join(parts[: i + 1])] = fd
        return self._dirs[rel]

    def write(self, rel: str, data: bytes) -> None:
        """Raises InputError(rel, ...) for a symlink (or a non-directory) on the way."""
        parent, _, name = rel.rpartition("/")
        try:
            dfd = self._dir(parent)
            fd = os.open(name, _FILE_FLAGS, 0o644, dir_fd=dfd)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                raise InputError(
                    rel,
                    "a symlink (or non-directory) on the way: refusing to write outside "
                    f"the sysroot {self.sysroot}",
                ) from None
            raise InputError(rel, f"cannot write below {self.sysroot}: {err.strerror}") from None
        # Overwrite in place and cut to length instead of O_TRUNC: truncating a file to 0
        # makes ext4 (auto_da_alloc) flush it on close, ~10x slower for a storm's writes.
        try:
            os.write(fd, data)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)


def apply_files(
    sysroot: Path | str, files: Iterable[tuple[str, str]], writer: SysrootWriter | None = None
) -> int:
    """Write each ``(relative path, content)`` below ``sysroot``; returns the count.
    Raises InputError for a path that would leave the sysroot through a symlink."""
    own = writer is None
    w = writer if writer is not None else SysrootWriter(sysroot)
    n = 0
    try:
        for rel, content in files:
            w.write(rel, content.encode())
            n += 1
    finally:
        if own:
            w.close()
    return n


class Replayer:
    """Deliver records to ``sink`` on the running loop, honouring ``at`` / ``speed``."""

    def __init__(
        self,
        sysroot: str | Path,
        sink: EventSink,
        *,
        speed: float = 1.0,
        clock: Any = time.monotonic,
        progress: Any = None,
    ) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self.sysroot = Path(sysroot)
        self.sink = sink
        self.speed = speed
        self.clock = clock
        self.progress = progress  # callable(delivered) or None
        self.stats = ReplayStats()

    async def run(self, records: Iterable[ReplayRecord]) -> ReplayStats:
        with SysrootWriter(self.sysroot) as writer:
            return await self._run(records, writer)

    async def _run(self, records: Iterable[ReplayRecord], writer: SysrootWriter) -> ReplayStats:
        t0 = self.clock()
        for rec in records:
            if self.speed > 0:
                delay = t0 + rec.at / self.speed - self.clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    await asyncio.sleep(0)
            else:
                await asyncio.sleep(0)
            try:
                self.stats.files_written += apply_files(self.sysroot, rec.files, writer)
            except InputError as err:
                msg = str(
                    InputError(
                        rec.source or "replay",
                        f"{err.source}: {err.problem}; event skipped",
                        rec.line or None,
                    )
                )
                log.error("%s", msg, extra={"REPLAY_FILE": rec.source, "REPLAY_LINE": rec.line})
                self.stats.skipped += 1
                self.stats.errors.append(msg)
                continue
            self.sink(
                HotplugEvent(rec.action, rec.subsystem, rec.devpath, rec.seqnum, self.clock())
            )
            self.stats.delivered += 1
            if self.progress is not None:
                self.progress(self.stats.delivered)
        return self.stats

    async def run_file(self, path: str | Path) -> ReplayStats:
        return await self.run(read_replay(path, self.stats))
