"""A tiny synchronous QMP client (JSON lines over a unix socket)."""

from __future__ import annotations

import json
import socket
import time
from typing import Any


class QMPError(RuntimeError):
    pass


class QMP:
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self._sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._sock.settimeout(timeout)
        self._buf = b""
        self.events: list[dict[str, Any]] = []
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise QMPError("QMP socket closed")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def execute(self, command: str, **arguments: Any) -> Any:
        from tests.e2e.guest import trace

        trace(f"qmp {command} {arguments}")
        req: dict[str, Any] = {"execute": command}
        if arguments:
            req["arguments"] = arguments
        self._sock.sendall(json.dumps(req).encode() + b"\n")
        while True:
            msg = self._read()
            if "event" in msg:
                self.events.append(msg)
                continue
            if "error" in msg:
                raise QMPError(f"{command}: {msg['error'].get('desc', msg['error'])}")
            return msg.get("return")

    # -- hotplug helpers -------------------------------------------------------------

    def free_cpu_slots(self) -> list[dict[str, Any]]:
        slots = self.execute("query-hotpluggable-cpus")
        return [s for s in slots if "qom-path" not in s]

    def add_cpu(self, dev_id: str) -> dict[str, Any]:
        free = self.free_cpu_slots()
        if not free:
            raise QMPError("no free CPU slot")
        # lowest socket/core/thread first, so guest CPU numbers grow in order
        slot = sorted(free, key=lambda s: tuple(sorted(s["props"].items())))[0]
        self.execute("device_add", driver=slot["type"], id=dev_id, **slot["props"])
        return slot

    def add_dimm(self, dev_id: str, size: int) -> None:
        self.execute(
            "object-add", **{"qom-type": "memory-backend-ram", "id": f"mem-{dev_id}", "size": size}
        )
        self.execute("device_add", driver="pc-dimm", id=dev_id, memdev=f"mem-{dev_id}")

    def device_del(self, dev_id: str) -> None:
        self.execute("device_del", id=dev_id)

    def wait_event(self, name: str, timeout: float = 60.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                data = ev.get("data", {})
                if ev["event"] == name and all(data.get(k) == v for k, v in match.items()):
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPError(f"timed out waiting for QMP event {name} {match}")
            self._sock.settimeout(left)
            try:
                msg = self._read()
            except TimeoutError:
                continue
            if "event" in msg:
                self.events.append(msg)

    def close(self) -> None:
        self._sock.close()
