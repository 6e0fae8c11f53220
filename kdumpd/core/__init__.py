"""The pure core: topology snapshot -> crash-image bytes.

Nothing in this package performs I/O or imports an edge library (pyudev,
dbus-fast, systemd, ctypes, asyncio).  Everything here is deterministic and
property-tested.
"""

from __future__ import annotations
