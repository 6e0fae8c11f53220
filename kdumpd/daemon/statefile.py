"""``state_dir/state.json``: what this daemon loaded, so a restart adopts it.

Written atomically (temporary file in the same directory, fsync, rename) after every
load, adoption and unload.  It records the generation, the backend, whether an
image is loaded, a digest of the topology that image describes, digests of the
loader inputs (kernel, initrd, cmdline) and the boot id, so that a restarted daemon
adopts its own image (no reload, no window) when the kernel still has it loaded and
it was loaded from the inputs now configured, and regenerates only if the topology
moved meanwhile.  ``unloaded_on_request`` keeps an Unload across a restart in the
same boot.  ``kernel_hotplug_support`` and ``last_update_usec`` are kept so
the state published after an adoption is the state before the restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdumpd.system.sysroot import Sysroot

log = logging.getLogger("kdumpd.daemon.statefile")

STATE_FILE = "state.json"
VERSION = 1


def key_digest(key: tuple[object, ...]) -> str:
    """A stable digest of ``Topology.image_key()`` (reprs of frozen dataclasses/ints)."""
    return hashlib.sha256(repr(key).encode()).hexdigest()


def boot_id(sysroot: str | Path = "/") -> str:
    return Sysroot(sysroot).read_value("/proc/sys/kernel/random/boot_id") or ""


@dataclass(frozen=True, slots=True)
class Recorded:
    generation: int
    backend: str
    loaded: bool
    topology_digest: str
    boot_id: str
    loads: int = 0
    inputs: dict[str, str] = field(default_factory=dict)  # loader input -> digest
    kernel_hotplug_support: bool = False
    last_update_usec: int = 0
    unloaded_on_request: bool = False  # Unload was asked for (kept across restarts)
    time: float = 0.0
    pid: int = 0
    version: int = VERSION


class StateFile:
    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / STATE_FILE

    def load(self) -> Recorded | None:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as err:
            log.warning("%s: cannot read: %s", self.path, err.strerror)
            return None
        try:
            obj: Any = json.loads(raw)
            if not isinstance(obj, dict) or obj.get("version") != VERSION:
                raise ValueError("unknown version")
            return Recorded(
                generation=int(obj["generation"]),
                backend=str(obj["backend"]),
                loaded=bool(obj["loaded"]),
                topology_digest=str(obj["topology_digest"]),
                boot_id=str(obj.get("boot_id", "")),
                loads=int(obj.get("loads", 0)),
                inputs={str(k): str(v) for k, v in dict(obj.get("inputs", {})).items()},
                kernel_hotplug_support=bool(obj.get("kernel_hotplug_support", False)),
                last_update_usec=int(obj.get("last_update_usec", 0)),
                unloaded_on_request=bool(obj.get("unloaded_on_request", False)),
                time=float(obj.get("time", 0.0)),
                pid=int(obj.get("pid", 0)),
            )
        except (ValueError, KeyError, TypeError) as err:
            log.warning("%s: ignoring unreadable state (%s); starting fresh", self.path, err)
            return None

    def save(self, rec: Recorded) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = asdict(rec)
        data["time"] = time.time()
        data["pid"] = os.getpid()
        tmp = self.path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()  # no 0-byte temporary file left behind (ENOSPC)
            raise

    def discard(self) -> bool:
        """Remove ``state.json`` (unlink needs no free space): a record that could not
        be updated must not be adopted by a restart.  False when even that failed."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError as err:
            log.error("%s: cannot remove the stale record: %s", self.path, err.strerror)
            return False
        return True
