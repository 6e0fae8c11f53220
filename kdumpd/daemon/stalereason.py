"""``StaleReason``: who may set it, and when the back-end's own reason replaces it.

Two sources write the state's ``stale_reason``:

- the kernel-log policy (:mod:`kdumpd.daemon.skipped`): the kernel skipped an
  in-place update; only a fresh load ends that reason;
- the back-end's optional ``stale_reason`` property: what the image it loaded may
  lack (an update missed during the load, RAM kexec-tools left out).  It is read
  after every load (and restore), after an adoption, and after a pass that ended
  without a load, since an in-place update may end it (the kernel rebuilt the
  elfcorehdr).  Without a load it replaces only a reason that is the back-end's own:
  a kernel-log reason waits for its load.

An unload on request ends every reason with the image.
"""

from __future__ import annotations

from kdumpd.daemon.state import StateStore


def backend_reason(backend: object) -> str:
    """The back-end's ``stale_reason`` (back-ends without one: "")."""
    return str(getattr(backend, "stale_reason", ""))


class StaleReasons:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._backend = ""  # the back-end's reason as last stored

    def loaded(self, backend: object) -> None:
        """A load, a restore or an adoption: the back-end's reason is the reason."""
        self._backend = backend_reason(backend)
        self.store.update(stale_reason=self._backend)

    def applied_in_place(self, backend: object) -> None:
        """A pass that ended without a load."""
        reason = backend_reason(backend)
        current = self.store.current.stale_reason
        if reason != current and current == self._backend:
            self.store.update(stale_reason=reason)
        self._backend = reason

    def unloaded(self) -> None:
        self._backend = ""
        self.store.update(stale_reason="")
