"""Architecture back-ends behind one small interface (see :mod:`kdumpd.arch.base`)."""

from __future__ import annotations
