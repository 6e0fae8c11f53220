"""Architecture back-ends behind one small interface (see :mod:`kdumpd.arch.base`)."""

from __future__ import annotations

from kdumpd.arch.base import Arch, FdtArch
from kdumpd.core.errors import UnsupportedError

__all__ = ["SUPPORTED", "Arch", "FdtArch", "get_arch"]

#: Architectures with a back-end, by the name ``uname -m`` prints.
SUPPORTED: tuple[str, ...] = ("x86_64", "ppc64le")


def get_arch(name: str) -> Arch:
    """The back-end for ``name`` (``uname -m`` spelling); raises UnsupportedError."""
    if name == "x86_64":
        from kdumpd.arch.x86_64 import X86_64

        return X86_64()
    if name == "ppc64le":
        from kdumpd.arch.ppc64le import Ppc64le

        return Ppc64le()
    raise UnsupportedError(
        f"architecture {name!r} is not supported (supported: {', '.join(SUPPORTED)})"
    )
