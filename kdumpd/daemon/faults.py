"""The fault policy: what a failed load leads to, for every back-end.

- ``EBUSY``: retry with exponential backoff (``busy_retries`` times);
- ``EPERM``/``EACCES`` from a ``kexec_load``-based back-end (kernel lockdown or
  ``kexec_load_disabled`` refuse it; IMA with a signature policy answers EACCES):
  switch to the ``kexec_file_load`` fallback and retry once.  ``EPERM``
  from ``kexec_file_load`` itself (unsigned kernel under lockdown,
  ``kernel.kexec_load_disabled=1``) is a fault like the next ones;
- anything else (``ENOMEM``, ``EINVAL``, ``ENOEXEC``, a refusal before the syscall):
  the load failed.  If the kernel no longer has an image, the last known good one is
  restored; the state says ``degraded`` (an image is loaded) or ``failed``; a retry
  is scheduled (:class:`RetryTimer`, 5 s doubling to 5 min).

The policy holds no daemon state: the reconciler passes the back-end in and records
what comes out.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kdumpd.core.errors import KdumpdError
from kdumpd.daemon.backends.base import ApplyResult, Backend, LoadRequest, LoadSyscall
from kdumpd.daemon.state import ImageState
from kdumpd.system.kexec import KexecError

log = logging.getLogger("kdumpd.daemon.faults")

Sleep = Callable[[float], Awaitable[None]]
#: The longest delay between two retries of a failed load (seconds).
MAX_RETRY_DELAY = 300.0


@dataclass(frozen=True, slots=True)
class Restored:
    """After a failed load: is an image loaded now, and did a restore load one."""

    loaded: bool
    result: ApplyResult | None  # the restore's result when it loaded


def state_after_failure(loaded: bool) -> ImageState:
    """``degraded`` while some crash image is loaded, ``failed`` without one."""
    return ImageState.DEGRADED if loaded else ImageState.FAILED


def eperm_message(err: KexecError) -> str:
    """One line for EPERM from a load syscall: what the kernel refused, and why."""
    # kernel.kexec_load_limit_panic at 0 (6.3+) refuses every crash load the same way
    # (docs/kernel-interfaces.md §13); LoadLimitPanic says whether that is the cause.
    if err.op == "kexec_file_load":
        return (
            "kexec_file_load: EPERM — unsigned kernel under lockdown, "
            "kernel.kexec_load_disabled=1 or kernel.kexec_load_limit_panic used up"
        )
    return (
        f"{err}: kernel lockdown, kernel.kexec_load_disabled=1 or "
        "kernel.kexec_load_limit_panic used up"
    )


class FaultPolicy:
    def __init__(
        self,
        *,
        sleep: Sleep = asyncio.sleep,
        fallback_backend: Callable[[], Backend] | None = None,
        busy_retries: int = 6,
        busy_delay: float = 0.05,
    ) -> None:
        self.sleep = sleep
        self.fallback_backend = fallback_backend
        self.busy_retries = busy_retries
        self.busy_delay = busy_delay

    async def apply(
        self,
        backend: Backend,
        request: LoadRequest,
        switch: Callable[[Backend, str], None],
    ) -> ApplyResult | str:
        """``backend.apply(request)`` with EBUSY retries and the EPERM switch (which
        calls ``switch(new_backend, reason)`` before retrying with it).  Returns the result,
        or the error line when the load failed."""
        delay = self.busy_delay
        busy = 0
        switched = False
        while True:
            try:
                return await backend.apply(request)
            except KexecError as err:
                if err.errno == errno.EBUSY and busy < self.busy_retries:
                    busy += 1
                    log.info("%s; retrying in %.0f ms", err, delay * 1000)
                    await self.sleep(delay)
                    delay *= 2
                    continue
                if err.errno in (errno.EPERM, errno.EACCES):
                    fallback = None if switched else self._eperm_fallback(backend)
                    if fallback is not None:
                        switched = True
                        log.warning(
                            "%s (kernel lockdown?); switching backend %s -> %s",
                            err,
                            backend.name,
                            fallback.name,
                        )
                        why = f"fallback: {backend.name} refused ({err.errno_name})"
                        backend = fallback
                        switch(fallback, why)
                        continue
                    return eperm_message(err)
                return str(err)
            except KdumpdError as err:  # refused before any syscall
                return str(err)

    def _eperm_fallback(self, backend: Backend) -> Backend | None:
        """A back-end using another load syscall, for EPERM from ``kexec_load`` (lockdown
        refuses unsigned segments, a signed kernel via ``kexec_file_load`` may pass).
        None when the retry would make the same syscall and fail the same way."""
        if self.fallback_backend is None or backend.load_syscall != LoadSyscall.KEXEC_LOAD:
            return None
        fallback = self.fallback_backend()
        if fallback.load_syscall in (LoadSyscall.NONE, backend.load_syscall):
            return None
        return fallback

    async def restore(
        self, backend: Backend, request: LoadRequest, *, last_good: bool, error: str
    ) -> Restored:
        """After a failed load: put the last good image back if the kernel has none."""
        result: ApplyResult | None = None
        if backend.is_loaded():
            # EBUSY, EPERM from kexec_load_permitted(), a refusal before the syscall:
            # the kernel did not free the old image, and a restore would only open
            # another window without a crash kernel.
            log.warning("the previous crash image is still loaded; not restoring it")
        elif last_good:
            try:
                result = await backend.restore(request)
                log.warning(
                    "restored the last known good crash image; it may not cover the "
                    "current CPUs and memory"
                )
            except (KexecError, KdumpdError) as err:
                log.error("restoring the last good crash image failed too: %s", err)
        loaded = backend.is_loaded() or result is not None
        if not loaded:
            log.error("NO CRASH KERNEL IS LOADED: a crash now will not be dumped (%s)", error)
        return Restored(loaded, result)


class RetryTimer:
    """Asks for a pass again after a failure, backing off from ``interval`` to
    :data:`MAX_RETRY_DELAY`; a success resets the delay."""

    def __init__(self, interval: float, fire: Callable[[], None]) -> None:
        self.interval = interval
        self.fire = fire
        self.delay = interval
        self.handle: asyncio.TimerHandle | None = None

    @property
    def scheduled(self) -> bool:
        return self.handle is not None

    def schedule(self) -> None:
        if self.handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        delay = self.delay
        self.delay = min(self.delay * 2, MAX_RETRY_DELAY)

        def fire() -> None:
            self.handle = None
            self.fire()

        self.handle = loop.call_later(delay, fire)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.delay = self.interval
