"""Adoption: may a restarted daemon take over the crash image ``state.json`` records?

Only when the kernel still has an image loaded, in the same boot, through the same
back-end, from the loader inputs configured now, and the back-end can confirm the
loaded image is the one recorded (:meth:`Backend.adopt`).  Otherwise the reconciler
loads afresh.  An Unload asked for before the restart (same boot) is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kdumpd.daemon.backends.base import Backend
from kdumpd.daemon.statefile import Recorded, StateFile, boot_id

log = logging.getLogger("kdumpd.daemon.adoption")


@dataclass(frozen=True, slots=True)
class Adoption:
    recorded: Recorded | None  # the record taken over; None: load afresh
    unloaded_on_request: bool = False  # stay unloaded (an Unload before the restart)


class Adopter:
    """Reads ``state.json`` once at start and decides; changes nothing itself."""

    def __init__(self, statefile: StateFile | None, sysroot: str | Path) -> None:
        self.statefile = statefile
        self.sysroot = sysroot

    def decide(self, backend: Backend) -> Adoption:
        if self.statefile is None:
            return Adoption(None)
        rec = self.statefile.load()
        if rec is None:
            return Adoption(None)
        current_boot = boot_id(self.sysroot)
        if rec.unloaded_on_request and not rec.loaded:
            if rec.boot_id == current_boot:
                log.info("the crash image was unloaded on request before the restart; not loading")
                return Adoption(None, unloaded_on_request=True)
            return Adoption(None)
        if not rec.loaded:
            return Adoption(None)
        reason = self._refusal(rec, backend, current_boot)
        if reason:
            log.info("%s: loading afresh", reason)
            return Adoption(None)
        log.info(
            "adopting the loaded crash image of generation %d (no reload)",
            rec.generation,
            extra={"GENERATION": rec.generation},
        )
        return Adoption(rec)

    @staticmethod
    def _refusal(rec: Recorded, backend: Backend, current_boot: str) -> str:
        """Why the recorded image cannot be taken over ("" when it can)."""
        if rec.backend != backend.name:
            return f"state.json records backend {rec.backend}, now {backend.name}"
        if rec.boot_id and current_boot and rec.boot_id != current_boot:
            return "state.json is from another boot"
        if not backend.is_loaded():
            return (
                f"state.json says generation {rec.generation} is loaded, the kernel says no image"
            )
        now = backend.input_digests()
        changed = sorted(k for k in set(rec.inputs) | set(now) if rec.inputs.get(k) != now.get(k))
        if changed:
            return f"the {', '.join(changed)} changed since generation {rec.generation} was loaded"
        if not backend.adopt():
            return (
                f"the loaded crash image is not verifiably the one generation {rec.generation} "
                "loaded"
            )
        return ""
