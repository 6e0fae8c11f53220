"""A synthetic x86 bzImage with the setup-header fields the loader reads."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from tests.unit.daemon_fakes import FIXTURE


def make_bzimage(
    *,
    setup_sects: int = 3,
    version: int = 0x020F,
    xloadflags: int = 0x7F,
    relocatable: int = 1,
    loadflags: int = 0x01,
    kernel_alignment: int = 0x200000,
    pref_address: int = 0x1000000,
    init_size: int = 0x1400000,
    cmdline_size: int = 2047,
    payload: int = 0x9000,
    boot_flag: int = 0xAA55,
    magic: bytes = b"HdrS",
) -> bytes:
    off = ((setup_sects or 4) + 1) * 512
    img = bytearray(off + payload)
    img[0x1EF] = 0xFF  # sentinel: must never reach boot_params
    img[0x1F1] = setup_sects
    struct.pack_into("<H", img, 0x1FE, boot_flag)
    img[0x200] = 0xEB
    img[0x201] = 0x6A  # header ends at 0x26c
    img[0x202:0x206] = magic
    struct.pack_into("<H", img, 0x206, version)
    img[0x210] = 0x00
    img[0x211] = loadflags
    struct.pack_into("<I", img, 0x214, 0x100000)  # code32_start
    struct.pack_into("<I", img, 0x230, kernel_alignment)
    img[0x234] = relocatable
    struct.pack_into("<H", img, 0x236, xloadflags)
    struct.pack_into("<I", img, 0x238, cmdline_size)
    struct.pack_into("<Q", img, 0x258, pref_address)
    struct.pack_into("<I", img, 0x260, init_size)
    for i in range(off, off + payload, 4096):
        img[i : i + 4] = b"KRNL"
    return bytes(img)


def bootable_sysroot(tmp_path: Path) -> Path:
    """The 6.1 guest fixture with a synthetic bzImage, a gzip-looking initrd and a
    crashkernel= command line: enough for kdumpd's own x86_64 loader."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    rel = (root / "proc/sys/kernel/osrelease").read_text().strip()
    (root / "boot").mkdir()
    (root / f"boot/vmlinuz-{rel}").write_bytes(make_bzimage())
    (root / "var/lib/kdump").mkdir(parents=True)
    (root / f"var/lib/kdump/initrd.img-{rel}").write_bytes(b"\x1f\x8b" + bytes(70000))
    (root / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro crashkernel=256M\n")
    return root
