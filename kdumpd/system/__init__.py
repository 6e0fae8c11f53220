"""Edges that touch the running system: sysfs/procfs reader, kexec syscalls."""

from __future__ import annotations
