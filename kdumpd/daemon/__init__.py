"""The reconciler, its state, and the back-ends that apply images to the kernel."""

from __future__ import annotations
