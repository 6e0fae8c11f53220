"""Fixtures every test gets."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _kdumpd_logger() -> Iterator[None]:
    """Any test that runs a CLI ``main()`` configures the "kdumpd" logger (level, a
    handler on that test's captured stderr, no propagation); put it back afterwards so
    later tests' ``caplog`` still sees kdumpd's records."""
    logger = logging.getLogger("kdumpd")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    yield
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]
