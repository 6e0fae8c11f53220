"""The supported architectures, each an :class:`Arch` (see :mod:`kdumpd.arch.base`).

"Back-end" in kdumpd means a loader (:mod:`kdumpd.daemon.backends`), never an
architecture."""

from __future__ import annotations

from kdumpd.arch.base import Arch, FdtArch
from kdumpd.core.errors import UnsupportedError

__all__ = ["SUPPORTED", "Arch", "FdtArch", "capture_append", "get_arch", "purgatory_blob"]

#: Architectures kdumpd supports, by the name ``uname -m`` prints.
SUPPORTED: tuple[str, ...] = ("x86_64", "ppc64le")


def get_arch(name: str) -> Arch:
    """The :class:`Arch` for ``name`` (``uname -m`` spelling); raises UnsupportedError."""
    if name == "x86_64":
        from kdumpd.arch.x86_64 import X86_64

        return X86_64()
    if name == "ppc64le":
        from kdumpd.arch.ppc64le import Ppc64le

        return Ppc64le()
    raise UnsupportedError(
        f"architecture {name!r} is not supported (supported: {', '.join(SUPPORTED)})"
    )


def purgatory_blob(name: str) -> bytes:
    """The built purgatory of architecture ``name`` for its ``kexec_load`` image
    builder; raises a one-line KdumpdError when it is not built or ``name`` has none."""
    if name == "x86_64":
        from kdumpd.arch.x86_64.purgatory import purgatory_blob as x86_64_blob

        return x86_64_blob()
    raise UnsupportedError(f"no kdumpd purgatory for {name}")


#: The capture kernel's arguments for a machine kdumpd has no back-end for.
GENERIC_CAPTURE_APPEND = "irqpoll nr_cpus=1 reset_devices"


def capture_append(machine: str) -> str:
    """What kdumpd appends to the capture kernel's command line on ``machine`` when
    nothing else says (``[kexec] append``'s default): the architecture's own line."""
    if machine == "x86_64":
        from kdumpd.arch.x86_64 import CAPTURE_APPEND

        return CAPTURE_APPEND
    if machine == "ppc64le":
        from kdumpd.arch.ppc64le import CAPTURE_APPEND as PPC_APPEND

        return PPC_APPEND
    return GENERIC_CAPTURE_APPEND
