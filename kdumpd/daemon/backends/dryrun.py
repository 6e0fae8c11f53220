"""``dry-run`` backend: no syscalls; each load is recorded in the state directory.

Load *N* writes every segment of the image to ``loads/NNNN.<kind>`` (the
elfcorehdr trimmed to the bytes in use, so ``readelf -a`` reads it) and appends
one JSON line to ``loads.jsonl``: time, generation, trigger, counters, covered CPUs
and ranges.  ``unload`` appends ``{"unload": true}``.  The last line tells whether
an image is "loaded", which is what a restarted daemon adopts.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdumpd.core.errors import KdumpdError
from kdumpd.daemon.backends.base import ApplyResult, LoadRequest

if TYPE_CHECKING:
    from kdumpd.core.image import CrashImage

LOADS_DIR = "loads"
LOADS_LOG = "loads.jsonl"
KEEP_LOADS = 64  # segment files of the last N loads kept when the daemon picks dry-run


class DryRunBackend:
    consumes_image = True
    load_syscall = ""

    def __init__(self, state_dir: str | Path, *, keep: int | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / LOADS_DIR
        self.log = self.state_dir / LOADS_LOG
        self.keep = keep
        self.loads = self._count_loads()
        self._last_good: bytes | None = None

    @property
    def name(self) -> str:
        return "dry-run"

    def _count_loads(self) -> int:
        n = 0
        try:
            with self.log.open() as fh:
                for line in fh:
                    if '"load"' in line:
                        n += 1
        except OSError:
            pass
        return n

    def last_record(self) -> dict[str, Any] | None:
        try:
            data = self.log.read_bytes()
        except OSError:
            return None
        lines = data.rstrip(b"\n").rsplit(b"\n", 1)
        try:
            rec = json.loads(lines[-1])
        except (ValueError, IndexError):
            return None
        return rec if isinstance(rec, dict) else None

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
            raise KdumpdError("dry-run: no crash image model to record")
        return request.image

    def _write(self, request: LoadRequest, hdr: bytes, trigger: str) -> int:
        t0 = time.monotonic_ns()
        self.dir.mkdir(parents=True, exist_ok=True)
        n = self.loads + 1
        files = []
        image = self._image(request)
        for seg in image.segments:
            buf = hdr if seg.kind == "elfcorehdr" else bytes(seg.buf)
            name = f"{n:04d}.{seg.kind}"
            (self.dir / name).write_bytes(buf)
            files.append(name)
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
        with self.log.open("a") as fh:
            fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
            fh.flush()
        self.loads = n
        if self.keep is not None and n > self.keep:
            for old in self.dir.glob(f"{n - self.keep:04d}.*"):
                os.unlink(old)
        return (time.monotonic_ns() - t0) // 1000

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
            raise KdumpdError("no crash image has loaded successfully yet; nothing to restore")
        gap = self._write(request, self._last_good, f"restore:{request.trigger}")
        return ApplyResult(True, gap, False, "dry-run restore of the last good elfcorehdr")

    async def unload(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as fh:
            fh.write(json.dumps({"unload": True, "time": round(time.time(), 6)}) + "\n")
