"""User- and system-facing edges: CLI, kdumpctl shim, D-Bus, systemd notify/journal."""

from __future__ import annotations
