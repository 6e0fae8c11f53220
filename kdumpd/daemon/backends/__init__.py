"""Backends that make a crash image the loaded one: kernel, file, dry-run (+ probe)."""

from __future__ import annotations
