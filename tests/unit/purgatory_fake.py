"""A stand-in for the purgatory segment that follows the purgatory ABI's header
layout (magic, boot_params, kernel entry, regions), so the loader can be tested
without the native blob.  It is test-only: the real class is
kdumpd.arch.x86_64.purgatory.Purgatory."""

from __future__ import annotations

import hashlib
import struct

MAGIC = b"KDPURG\x00\x01"
HEADER_SIZE = 0x400
REGION = struct.Struct("<QQ32sII")
REGIONS_AT = 0x40


def fake_blob(size: int = 0x1800) -> bytes:
    blob = bytearray(size)
    blob[0:2] = b"\xeb\x3e"  # jmp short, never \x7fELF
    blob[8:16] = MAGIC
    struct.pack_into("<IIII", blob, 0x10, 1, HEADER_SIZE, 0, 3)
    struct.pack_into("<II", blob, 0x38, size + 0x2000, 0)
    return bytes(blob)


class FakePurgatory:
    def __init__(self, blob: bytes) -> None:
        if blob[8:16] != MAGIC:
            raise ValueError("not a purgatory blob")
        self.buffer = bytearray(blob)
        (mem,) = struct.unpack_from("<I", blob, 0x38)
        self.memsz = (mem + 4095) // 4096 * 4096
        self.regions: dict[int, tuple[int, int, bytes, int]] = {}

    def configure(self, *, boot_params: int, kernel_entry: int) -> None:
        struct.pack_into("<QQQ", self.buffer, 0x20, boot_params, kernel_entry, 0x3F8)

    def _store(self, index: int) -> None:
        start, length, digest, flags = self.regions[index]
        REGION.pack_into(
            self.buffer, REGIONS_AT + index * REGION.size, start, length, digest, flags, 0
        )
        struct.pack_into("<I", self.buffer, 0x18, max(self.regions) + 1)

    def set_region(
        self, index: int, start: int, data: object, flags: int = 0, *, digest: bytes | None = None
    ) -> None:
        buf = memoryview(data)  # type: ignore[arg-type]
        if digest is None:
            digest = hashlib.sha256(buf).digest()
        self.regions[index] = (start, len(buf), digest, int(flags))
        self._store(index)

    def update_digest(self, index: int, data: object) -> None:
        start, length, _, flags = self.regions[index]
        buf = memoryview(data)  # type: ignore[arg-type]
        assert len(buf) == length
        self.regions[index] = (start, length, hashlib.sha256(buf).digest(), flags)
        self._store(index)

    @property
    def nregions(self) -> int:
        return len(self.regions)

    def boot_params(self) -> int:
        return int(struct.unpack_from("<Q", self.buffer, 0x20)[0])

    def kernel_entry(self) -> int:
        return int(struct.unpack_from("<Q", self.buffer, 0x28)[0])

    def region(self, index: int) -> tuple[int, int, bytes, int]:
        start, length, digest, flags, _ = REGION.unpack_from(
            self.buffer, REGIONS_AT + index * REGION.size
        )
        return start, length, digest, flags
