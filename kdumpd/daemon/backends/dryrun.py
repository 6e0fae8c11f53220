"""``dry-run`` backend: no syscalls; each load is recorded in the state directory.

Load *N* writes every segment of the image to ``loads/NNNN.<kind>`` (the
elfcorehdr trimmed to the bytes in use, so ``readelf -a`` reads it) and appends
one JSON line to ``loads.jsonl``: time, generation, trigger, counters, covered CPUs
and ranges.  ``unload`` appends ``{"unload": true}``.  The last line tells whether
an image is "loaded", which is what a restarted daemon adopts.

With ``keep`` (the daemon always passes :data:`KEEP_LOADS`) both are bounded: the
segment files of the last ``keep`` loads stay, and ``loads.jsonl`` is cut to its
last ``keep`` lines whenever it reaches ``2 * keep`` (atomically: temporary file,
rename), so a long-running dry-run daemon does not fill ``/run``.  Load numbers keep
counting across the cut (the next number is the last recorded one + 1).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdumpd.daemon.backends.base import (
    ApplyResult,
    BackendName,
    LoadRefused,
    LoadRequest,
    LoadSyscall,
    NothingToRestore,
)

if TYPE_CHECKING:
    from kdumpd.core.image import CrashImage

log = logging.getLogger("kdumpd.daemon.backends.dryrun")

LOADS_DIR = "loads"
LOADS_LOG = "loads.jsonl"
KEEP_LOADS = 64  # segment files of the last N loads kept when the daemon picks dry-run


class DryRunBackend:
    consumes_image = True
    load_syscall = LoadSyscall.NONE

    def __init__(self, state_dir: str | Path, *, keep: int | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / LOADS_DIR
        self.log = self.state_dir / LOADS_LOG
        self.keep = keep
        self._lines = 0
        self.loads = self._count_loads()
        self._last_good: bytes | None = None

    @property
    def name(self) -> BackendName:
        return BackendName.DRY_RUN

    def _count_loads(self) -> int:
        """The last load number recorded (the log may have been cut)."""
        n = 0
        try:
            with self.log.open() as fh:
                for line in fh:
                    self._lines += 1
                    if '"load"' not in line:
                        continue
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict) and isinstance(rec.get("load"), int):
                        n = max(n, rec["load"])
        except OSError:
            pass
        return n

    def last_record(self) -> dict[str, Any] | None:
        """The last line of ``loads.jsonl`` (read from the end, not the whole file)."""
        try:
            with self.log.open("rb") as fh:
                end = fh.seek(0, os.SEEK_END)
                chunk = 1 << 16
                data = b""
                pos = end
                while pos > 0:
                    step = min(chunk, pos)
                    pos -= step
                    fh.seek(pos)
                    data = fh.read(step) + data
                    if data.rstrip(b"\n").count(b"\n") >= 1:
                        break
        except OSError:
            return None
        lines = data.rstrip(b"\n").rsplit(b"\n", 1)
        try:
            rec = json.loads(lines[-1])
        except (ValueError, IndexError):
            return None
        return rec if isinstance(rec, dict) else None

    def _append(self, rec: dict[str, Any]) -> None:
        """One line, all or nothing: a write that fails part-way (ENOSPC) is cut
        off again, so the log never ends in half a record."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(rec, separators=(",", ":")) + "\n").encode()
        with self.log.open("ab") as fh:
            size = fh.tell()
            try:
                fh.write(line)
                fh.flush()
            except OSError:
                with contextlib.suppress(OSError):
                    fh.truncate(size)
                raise
        self._lines += 1
        if self.keep is not None and self._lines >= 2 * max(1, self.keep):
            self._rotate(max(1, self.keep))

    def _rotate(self, keep: int) -> None:
        """Cut the log to its last ``keep`` lines; a failure (ENOSPC) keeps the long
        log and removes the temporary file: the load itself was recorded."""
        tmp = self.log.with_name(f".{LOADS_LOG}.{os.getpid()}.tmp")
        try:
            lines = self.log.read_bytes().splitlines(keepends=True)[-keep:]
            tmp.write_bytes(b"".join(lines))
            os.replace(tmp, self.log)
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("cannot cut %s: %s", self.log, err.strerror or err)
            return
        self._lines = len(lines)

    def is_loaded(self) -> bool:
        rec = self.last_record()
        return rec is not None and "load" in rec

    def adopt(self) -> bool:
        return True

    def input_digests(self) -> dict[str, str]:
        return {}

    @staticmethod
    def _image(request: LoadRequest) -> CrashImage:
        if request.image is None:
            raise LoadRefused("dry-run: no crash image model to record")
        return request.image

    def _write(self, request: LoadRequest, hdr: bytes, trigger: str) -> int:
        """The dry-run "load": segment files, then the log line.  A write that fails
        (ENOSPC, EROFS) is a failed load, as a failed syscall would be: whatever it
        wrote is removed again (no 0-byte ``loads/NNNN.elfcorehdr`` left behind) and
        the error names the file."""
        t0 = time.monotonic_ns()
        n = self.loads + 1
        image = self._image(request)
        files: list[str] = []
        path = self.dir
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for seg in image.segments:
                buf = hdr if seg.kind == "elfcorehdr" else bytes(seg.buf)
                name = f"{n:04d}.{seg.kind}"
                path = self.dir / name
                files.append(name)
                path.write_bytes(buf)
            path = self.log
            self._append(self._record(request, image, n, trigger, files))
        except OSError as err:
            for name in files:
                with contextlib.suppress(OSError):
                    os.unlink(self.dir / name)
            raise LoadRefused(
                f"dry-run load {n}: cannot write {path}: {err.strerror or err}"
            ) from None
        self.loads = n
        if self.keep is not None and n > self.keep:
            for old in self.dir.glob(f"{n - self.keep:04d}.*"):
                os.unlink(old)
        return (time.monotonic_ns() - t0) // 1000

    @staticmethod
    def _record(
        request: LoadRequest, image: CrashImage, n: int, trigger: str, files: list[str]
    ) -> dict[str, Any]:
        layout = image.layout
        rec = {
            "load": n,
            "time": round(time.time(), 6),
            "generation": request.generation,
            "trigger": trigger,
            "counters": dict(request.counters),
            "segments": files,
            "cpus": list(layout.cpus) if layout else [],
            "ranges": [[r.start, r.end] for r in layout.ranges] if layout else [],
            "elfcorehdr_used": layout.used if layout else 0,
            "elfcorehdr_capacity": layout.capacity if layout else 0,
        }
        return rec

    async def apply(self, request: LoadRequest) -> ApplyResult:
        image = self._image(request)
        layout = image.layout
        used = layout.used if layout else len(image.elfcorehdr.buf)
        hdr = bytes(image.elfcorehdr.buf[:used])
        gap = self._write(request, hdr, request.trigger)
        self._last_good = hdr
        return ApplyResult(True, gap, False, f"dry-run load {self.loads}")

    async def restore(self, request: LoadRequest) -> ApplyResult:
        if self._last_good is None:
            raise NothingToRestore()
        gap = self._write(request, self._last_good, f"restore:{request.trigger}")
        return ApplyResult(True, gap, False, "dry-run restore of the last good elfcorehdr")

    async def unload(self) -> None:
        self._append({"unload": True, "time": round(time.time(), 6)})
