"""End-to-end harness: real Debian kernels in QEMU (TCG) that hot-plug, crash and
report what their vmcore contains.  See docs/e2e.md."""
