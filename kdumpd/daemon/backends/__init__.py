"""Backends that make a crash image the loaded one: kernel, file, kexec-tools, dry-run
(+ probe)."""

from __future__ import annotations

from kdumpd.daemon.backends.base import BackendName

#: Every back-end ``--backend``/``backend =`` accepts besides ``auto``; the factories
#: are :data:`kdumpd.daemon.backends.probe.LOADERS` (+ ``dry-run``).
BACKEND_NAMES: tuple[str, ...] = tuple(BackendName)
