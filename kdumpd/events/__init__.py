"""Event sources (udev, replay, synthetic storms) and the debouncer."""

from __future__ import annotations
