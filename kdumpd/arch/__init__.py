"""The supported architectures, each an :class:`Arch` (see :mod:`kdumpd.arch.base`).

"Back-end" in kdumpd means a loader (:mod:`kdumpd.daemon.backends`), never an
architecture."""

from __future__ import annotations

from kdumpd.arch.base import Arch, FdtArch
from kdumpd.core.errors import UnsupportedError

__all__ = ["SUPPORTED", "Arch", "FdtArch", "get_arch"]

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
