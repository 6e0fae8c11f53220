"""kdumpd: keep the loaded kdump crash image current across CPU and memory hotplug."""

from __future__ import annotations

__version__ = "0.1.0"
