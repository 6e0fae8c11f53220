"""The x86_64 kexec_load image: bzImage reader, boot_params, e820, placement and
validation, the segment back-end's preparation, the kexec_load wrapper."""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import hashlib
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from kdumpd.arch.x86_64 import X86_64
from kdumpd.arch.x86_64 import bootparams as bp
from kdumpd.arch.x86_64.bzimage import cmdline_size, read_setup_header
from kdumpd.arch.x86_64.loader import (
    KEXEC_ARCH_X86_64,
    REGION_BOOT_PARAMS,
    REGION_ELFCOREHDR,
    REGION_INITRD,
    REGION_KERNEL,
    X86ImageBuilder,
    headroom,
    unpack_e820,
)
from kdumpd.core.errors import InputError, KdumpdError
from kdumpd.core.image import CrashImage
from kdumpd.core.segment import (
    LoaderInputs,
    Segment,
    SegmentKind,
    validate_segments,
)
from kdumpd.core.topology import (
    CrashNote,
    MemRange,
    Resource,
    Topology,
)
from kdumpd.system import kexec

from .bzimage_support import make_bzimage
from .purgatory_fake import FakePurgatory, fake_blob

MiB = 1 << 20
CRASH = (0x30000000, 0x3FFFFFFF)  # 256 MiB


def topology(crash: tuple[tuple[int, int], ...] = (CRASH,), ram_top: int = 0x7FFDFFFF) -> Topology:
    iomem = [
        Resource(0x0, 0xFFF, "Reserved", 0),
        Resource(0x1000, 0x9FBFF, "System RAM", 0),
        Resource(0x9FC00, 0x9FFFF, "Reserved", 0),
        Resource(0xF0000, 0xFFFFF, "Reserved", 0),
        Resource(0x100000, ram_top, "System RAM", 0),
        Resource(0x1000000, 0x1FFFFFF, "Kernel code", 1),
        *(Resource(s, e, "Crash kernel", 1) for s, e in crash),
        Resource(0x7FFE0000, 0x7FFEFFFF, "ACPI Tables", 0),
        Resource(0x7FFF0000, 0x7FFFFFFF, "ACPI Non-volatile Storage", 0),
        Resource(0xFED1C000, 0xFED1FFFF, "Reserved", 0),
    ]
    cpus = (0, 1)
    return Topology(
        arch="x86_64",
        possible_cpus=(0, 1, 2, 3),
        present_cpus=cpus,
        online_cpus=cpus,
        crash_notes=tuple(CrashNote(c, 0x1000 * (c + 1), 0x200) for c in cpus),
        iomem=tuple(iomem),
    )


def crash_image(t: Topology) -> CrashImage:
    arch = X86_64()
    return CrashImage.for_topology(arch, t, arch.elfcorehdr_capacity(t, max_cpus=8, max_ranges=64))


def inputs(
    kernel: bytes | None = None, initrd: bytes | None = b"\x1f\x8b" + bytes(5000)
) -> LoaderInputs:
    bootp = bytearray(4096)
    struct.pack_into("<Q", bootp, 0x70, 0xF5A40)
    return LoaderInputs(
        kernel=kernel if kernel is not None else make_bzimage(),
        kernel_name="vmlinuz-test",
        initrd=initrd,
        cmdline="console=ttyS0 irqpoll nr_cpus=1 reset_devices",
        purgatory=fake_blob(),
        boot_params=bytes(bootp),
    )


def build(t: Topology | None = None, **kw: Any) -> tuple[Any, CrashImage, Topology]:
    t = t or topology()
    image = crash_image(t)
    seg = X86ImageBuilder(FakePurgatory).build(inputs(**kw), t, image.elfcorehdr)
    return seg, image, t


def by_kind(seg_image: Any) -> dict[SegmentKind, Segment]:
    return {s.kind: s for s in seg_image.plan.segments}


# -- bzImage -----------------------------------------------------------------------


def test_setup_header_fields() -> None:
    h = read_setup_header(make_bzimage(), "k")
    assert (h.version, h.kernel_alignment, h.pref_address, h.init_size) == (
        0x020F,
        0x200000,
        0x1000000,
        0x1400000,
    )
    assert h.payload_offset == 4 * 512 and h.header_end == 0x26C and h.cmdline_size == 2047
    assert read_setup_header(make_bzimage(setup_sects=0), "k").payload_offset == 5 * 512


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"boot_flag": 0x1234}, "boot flag"),
        ({"magic": b"NoNo"}, "HdrS"),
        ({"version": 0x020B}, "2.11"),
        ({"xloadflags": 0x7E}, "XLF_KERNEL_64"),
        ({"xloadflags": 0x7D}, "above 4 GiB"),
        ({"relocatable": 0}, "relocatable"),
        ({"kernel_alignment": 0x300000}, "power of two"),
    ],
)
def test_not_a_loadable_bzimage_is_one_line(kw: dict[str, Any], needle: str) -> None:
    with pytest.raises(InputError) as err:
        read_setup_header(make_bzimage(**kw), "/boot/vmlinuz-x")
    text = str(err.value)
    assert "\n" not in text and text.startswith("/boot/vmlinuz-x: ") and needle in text


def test_capture_cmdline_may_fill_cmdline_size_without_the_nul() -> None:
    """The whole command line (elfcorehdr= prefix included) may be cmdline_size
    characters long; the NUL is not counted (Documentation/arch/x86/boot.rst)."""
    setup = read_setup_header(make_bzimage(cmdline_size=256), "k")
    args = "a" * (256 - bp.ELFCOREHDR_ARG_MAX)
    assert len(bp.capture_cmdline(0xFFFF_FFFF_FFFF_F000, args)) == 256 + 1  # with the NUL
    bp.check_cmdline(setup, args, "k")
    with pytest.raises(InputError, match="at most 226 besides"):
        bp.check_cmdline(setup, args + "a", "k")


def test_cmdline_size_of_any_header() -> None:
    assert cmdline_size(make_bzimage(cmdline_size=4096)) == 4096
    # boot.rst: "the command line can contain at most cmdline_size characters" (the
    # NUL not counted); 255 before the field existed
    assert cmdline_size(make_bzimage(version=0x0205)) == 255
    assert cmdline_size(b"\x7fELF" + bytes(1000)) is None


# -- boot_params and e820 -----------------------------------------------------------


def test_boot_params_fields_against_the_bzimage() -> None:
    seg, image, _ = build()
    kernel = make_bzimage()
    s = by_kind(seg)
    page = bytes(s[SegmentKind.SETUP].buf)
    written = {0x210, 0x211, *range(0x218, 0x220), *range(0x228, 0x22C)}
    for off in range(0x1F1, 0x26C):
        if off not in written:
            assert page[off] == kernel[off], hex(off)
    assert page[0x1EF] == 0  # sentinel not copied
    assert page[0x26C:0x2D0] == bytes(0x2D0 - 0x26C)
    assert page[0x210] == 0xD0 and page[0x211] == 0
    assert struct.unpack_from("<I", page, 0x214)[0] == 0x100000  # code32_start untouched
    bpmem = s[SegmentKind.SETUP].mem
    cmd = struct.unpack_from("<I", page, 0x228)[0] | struct.unpack_from("<I", page, 0xC8)[0] << 32
    assert cmd == bpmem + 4096
    text = page[4096:].split(b"\0")[0].decode()
    assert (
        text
        == f"elfcorehdr={image.elfcorehdr.mem:#x} console=ttyS0 irqpoll nr_cpus=1 reset_devices"
    )
    initrd = s[SegmentKind.INITRD]
    assert struct.unpack_from("<I", page, 0x218)[0] == initrd.mem & 0xFFFFFFFF
    assert struct.unpack_from("<I", page, 0x0C0)[0] == initrd.mem >> 32
    assert struct.unpack_from("<I", page, 0x21C)[0] == initrd.bufsz
    assert struct.unpack_from("<Q", page, 0x70)[0] == 0xF5A40
    assert page[0x1C0:0x1E0] == bytes(32)  # efi_info zeroed


def test_capture_e820_order_and_elfcorehdr_hole() -> None:
    seg, image, _ = build()
    e820 = unpack_e820(by_kind(seg)[SegmentKind.SETUP].buf)
    hdr = image.elfcorehdr
    assert e820[0] == (0x1000, 0x9EC00, bp.E820_RAM)  # RAM below 1 MiB only
    assert (0x7FFE0000, 0x10000, bp.E820_ACPI) in e820
    assert (0x7FFF0000, 0x10000, bp.E820_NVS) in e820
    assert (0x0, 0x1000, bp.E820_RESERVED) in e820
    ram = [(a, a + n) for a, n, t in e820 if t == bp.E820_RAM and a >= 1 * MiB]
    assert ram[0] == (CRASH[0], hdr.mem)
    tail = ram[1:]
    assert all(a >= hdr.mem + hdr.memsz for a, _ in tail)
    assert sum(b - a for a, b in ram) + hdr.memsz == CRASH[1] - CRASH[0] + 1
    assert not any(
        a < 1 * MiB <= a + n and t == bp.E820_RAM and a + n > 1 * MiB for a, n, t in e820
    )


def test_crashkernel_low_is_ram_and_never_holds_segments() -> None:
    t = topology(crash=((0x8000000, 0xFFFFFFF), (0x130000000, 0x13FFFFFFF)), ram_top=0x13FFFFFFF)
    seg, _, _ = build(t)
    e820 = unpack_e820(by_kind(seg)[SegmentKind.SETUP].buf)
    assert (0x8000000, 0x8000000, bp.E820_RAM) in e820
    assert all(s.mem >= 0x130000000 for s in seg.plan.segments)


def test_more_than_128_e820_entries_go_to_setup_e820_ext() -> None:
    t = topology()
    extra = tuple(
        Resource(0x80000000 + i * 0x10000, 0x80000000 + i * 0x10000 + 0xFFF, "Reserved", 0)
        for i in range(200)
    )
    t = dataclasses.replace(t, iomem=t.iomem + extra)
    seg, _, _ = build(t)
    page = by_kind(seg)[SegmentKind.SETUP]
    buf = bytes(page.buf)
    assert buf[0x1E8] == 128
    sd = struct.unpack_from("<Q", buf, 0x250)[0]
    off = sd - page.mem
    nxt, typ, length = struct.unpack_from("<QII", buf, off)
    total = len(bp.capture_e820(t.iomem, MemRange(*CRASH), crash_image(t).elfcorehdr.range))
    assert (nxt, typ, length) == (0, bp.SETUP_E820_EXT, (total - 128) * 20)
    assert off + 16 + length <= page.bufsz <= page.memsz


# -- placement and validation -------------------------------------------------------


def test_layout_top_down_inside_crashk_res() -> None:
    seg, image, t = build()
    s = by_kind(seg)
    hdr, pur, setup, initrd, kernel = (
        s[k]
        for k in (
            SegmentKind.ELFCOREHDR,
            SegmentKind.PURGATORY,
            SegmentKind.SETUP,
            SegmentKind.INITRD,
            SegmentKind.KERNEL,
        )
    )
    assert hdr is image.elfcorehdr and hdr.buf is image.header.buffer
    assert hdr.mem + hdr.memsz == CRASH[1] + 1
    assert pur.mem + pur.memsz <= hdr.mem and setup.mem + setup.memsz <= pur.mem
    assert initrd.mem + initrd.memsz <= setup.mem and kernel.mem + kernel.memsz <= initrd.mem
    assert kernel.mem % 0x200000 == 0 and kernel.mem >= 0x1000000
    assert kernel.memsz == 0x1400000 and kernel.bufsz == 0x9000
    assert bytes(kernel.buf[:4]) == b"KRNL"
    assert kernel.mem - CRASH[0] >= headroom(t)
    assert seg.plan.entry == pur.mem and seg.plan.arch_flag == KEXEC_ARCH_X86_64
    assert [x.kind for x in seg.plan.segments].count(SegmentKind.ELFCOREHDR) == 1
    starts = [bytes(x.buf[:4]) == b"\x7fELF" for x in seg.plan.segments]
    assert starts == [x.kind == SegmentKind.ELFCOREHDR for x in seg.plan.segments]


def test_purgatory_header_regions_and_entry() -> None:
    seg, image, _ = build()
    s = by_kind(seg)
    pur: FakePurgatory = seg.purgatory
    assert pur.boot_params() == s[SegmentKind.SETUP].mem
    assert pur.kernel_entry() == s[SegmentKind.KERNEL].mem + 0x200
    for index, kind in (
        (REGION_ELFCOREHDR, SegmentKind.ELFCOREHDR),
        (REGION_KERNEL, SegmentKind.KERNEL),
        (REGION_BOOT_PARAMS, SegmentKind.SETUP),
        (REGION_INITRD, SegmentKind.INITRD),
    ):
        start, length, digest, flags = pur.region(index)
        x = s[kind]
        assert (start, length, flags) == (x.mem, x.bufsz, 0)
        assert digest == hashlib.sha256(x.buf).digest()
    # a burst: the header changes in place, refresh rehashes region 0 only
    before = {i: pur.region(i) for i in range(4)}
    t2 = dataclasses.replace(topology(), present_cpus=(0,), online_cpus=(0,))
    image.regenerate(t2)
    seg.refresh()
    assert pur.region(0)[2] == hashlib.sha256(image.header.buffer).digest() != before[0][2]
    assert all(pur.region(i) == before[i] for i in (1, 2, 3))


def test_too_small_reservation_is_one_line_with_the_size() -> None:
    t = topology(crash=((0x30000000, 0x30FFFFFF),))  # 16 MiB
    with pytest.raises(KdumpdError) as err:
        build(t)
    text = str(err.value)
    assert "\n" not in text and "too small" in text and "needs about" in text and "MiB" in text


def test_long_cmdline_refused_before_anything() -> None:
    t = topology()
    image = crash_image(t)
    inp = dataclasses.replace(inputs(), cmdline="x" * 2018)  # cmdline_size 2047 - 30 + 1
    with pytest.raises(InputError, match="capture command line"):
        X86ImageBuilder(FakePurgatory).build(inp, t, image.elfcorehdr)


def _seg(kind: SegmentKind, mem: int, memsz: int, buf: bytes = b"data") -> Segment:
    return Segment(kind, mem, memsz, buf)


WINDOW = MemRange(0x30000000, 0x3FFFFFFF)
ELF = b"\x7fELF" + bytes(60)


@pytest.mark.parametrize(
    ("segments", "entry", "needle"),
    [
        ([], 0x30000000, "no segments"),
        (
            [_seg(SegmentKind.KERNEL, 0x30400000 + i * 4096, 4096) for i in range(17)],
            0x30400000,
            "16",
        ),
        ([_seg(SegmentKind.KERNEL, 0x30400800, 4096)], 0x30400800, "page-aligned"),
        ([_seg(SegmentKind.KERNEL, 0x30400000, 4096, bytes(8192))], 0x30400000, "bufsz"),
        ([_seg(SegmentKind.KERNEL, 0x2FF00000, 0x200000)], 0x30000000, "outside"),
        (
            [
                _seg(SegmentKind.KERNEL, 0x30400000, 0x2000),
                _seg(SegmentKind.INITRD, 0x30401000, 0x1000),
            ],
            0x30400000,
            "overlaps",
        ),
        ([_seg(SegmentKind.KERNEL, 0x30400000, 0x1000)], 0x20000000, "outside Crash kernel"),
        ([_seg(SegmentKind.KERNEL, 0x30400000, 0x1000)], 0x30500000, "in no segment"),
        ([_seg(SegmentKind.KERNEL, 0x30400000, 0x1000, ELF)], 0x30400000, "starts with"),
        ([_seg(SegmentKind.ELFCOREHDR, 0x30400000, 0x1000)], 0x30400000, "does not start"),
        ([_seg(SegmentKind.KERNEL, 0x30001000, 0x1000)], 0x30001000, "free below"),
    ],
)
def test_validate_segments_refuses(segments: list[Segment], entry: int, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        validate_segments(segments, entry, WINDOW, headroom=0x100000)


# -- the kexec_load wrapper ---------------------------------------------------------


class _Recorder:
    def __init__(self, ret: int = 0) -> None:
        self.ret = ret
        self.calls: list[tuple[int, int, int, list[tuple[bytes, int, int, int]], int]] = []
        self.bufs: list[list[int]] = []  # the raw buf pointers of each call

    def __call__(self, nr: Any, entry: Any, n: Any, array: Any, flags: Any) -> int:
        self.bufs.append([a.buf or 0 for a in array[: n.value]])
        segs = [
            (ctypes.string_at(a.buf, a.bufsz) if a.bufsz else b"", a.bufsz, a.mem or 0, a.memsz)
            for a in array[: n.value]
        ]
        self.calls.append((nr.value, entry.value, n.value, segs, flags.value))  # type: ignore[arg-type]
        if self.ret:
            ctypes.set_errno(self.ret)
            return -1
        return 0


def test_kexec_load_passes_buffers_in_place(tmp_path: Path) -> None:
    sys = kexec.LinuxKexec("x86_64")
    rec = _Recorder()
    sys._syscall = rec  # type: ignore[assignment]
    f = tmp_path / "blob"
    f.write_bytes(b"mapped-file" * 1000)
    with kexec.MappedFile(str(f)) as m:
        ba = bytearray(b"\x7fELF" + bytes(100))
        tail = m.view[6:]
        sys.load(0x3FF00000, [(ba, 0x3FFF0000, 4096), (tail, 0x3FE00000, 0x10000)], 0x3E0001)
        mapped_at = _address_of(tail)
        tail.release()
    nr, entry, n, segs, flags = rec.calls[0]
    assert (nr, entry, n, flags) == (246, 0x3FF00000, 2, 0x3E0001)
    assert segs[0] == (bytes(ba), 104, 0x3FFF0000, 4096)
    assert segs[1][0] == (b"mapped-file" * 1000)[6:] and segs[1][2:] == (0x3FE00000, 0x10000)
    # the kernel is pointed at the caller's own memory, not at a copy of it
    ba_at = ctypes.addressof((ctypes.c_char * len(ba)).from_buffer(ba))
    assert rec.bufs[0] == [ba_at, mapped_at]


def _address_of(buf: memoryview) -> int:
    """The address a (read-only) buffer exports, through the buffer protocol."""
    view = kexec._PyBuffer()
    assert kexec._get_buffer(ctypes.py_object(buf), ctypes.byref(view), 0) == 0
    try:
        return view.buf or 0
    finally:
        kexec._release_buffer(ctypes.byref(view))


class _FailingMlock:
    def __init__(self, code: int) -> None:
        self.code = code
        self.calls = 0

    def __call__(self, addr: Any, size: Any) -> int:
        self.calls += 1
        ctypes.set_errno(self.code)
        return -1


def test_kexec_load_warns_once_per_file_when_mlock_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without RLIMIT_MEMLOCK room the load still happens, and says once per file that
    its pages may be read from disk while no crash image is loaded."""
    sys = kexec.LinuxKexec("x86_64")
    rec = _Recorder()
    sys._syscall = rec  # type: ignore[assignment]
    sys._mlock = _FailingMlock(errno.ENOMEM)  # type: ignore[assignment]
    f = tmp_path / "initrd.img"
    f.write_bytes(b"initrd" * 1000)
    caplog.set_level(logging.WARNING, logger="kdumpd.system.kexec")
    with kexec.MappedFile(str(f)) as m:
        for _ in range(3):
            sys.load(0x1000, [(m.view, 0x100000, 0x2000)], 1)
    assert len(rec.calls) == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert str(f) in text and "ENOMEM" in text and "LimitMEMLOCK" in text


def test_unit_lets_mlock_cover_the_image() -> None:
    """mlock of the kernel and initrd needs RLIMIT_MEMLOCK room (or CAP_IPC_LOCK);
    systemd's default limit (8 MiB) does not hold an initrd, and the unit's bounding
    set has no CAP_IPC_LOCK."""
    unit = (Path(__file__).resolve().parents[2] / "systemd/kdumpd.service").read_text()
    lines = [line.strip() for line in unit.splitlines() if not line.startswith("#")]
    assert "LimitMEMLOCK=infinity" in lines or any(
        line.startswith("CapabilityBoundingSet=") and "CAP_IPC_LOCK" in line for line in lines
    )


@pytest.mark.parametrize("code", [errno.EPERM, errno.EACCES, errno.EADDRNOTAVAIL])
def test_kexec_load_errno_becomes_kexec_error(code: int) -> None:
    sys = kexec.LinuxKexec("x86_64")
    sys._syscall = _Recorder(code)  # type: ignore[assignment]
    with pytest.raises(kexec.KexecError) as err:
        sys.load(0x1000, [(b"x", 0x1000, 4096)], 1)
    assert err.value.errno == code and "kexec_load" in str(err.value)


def test_manifest_is_json() -> None:
    seg, _, _ = build()
    man = seg.manifest()
    json.dumps(man)
    kinds = [m["kind"] for m in man]
    assert kinds == ["elfcorehdr", "purgatory", "setup", "initrd", "kernel"]
    assert all(int(str(m["mem"]), 16) % 4096 == 0 for m in man)
    assert [m["entry"] for m in man if m["entry"] is not None] == [seg.plan.entry]


def test_mapped_file_reads_and_digests_through_its_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sha256 in pieces equals the mapped bytes' digest; a truncation is an error (no
    SIGBUS); a rename over the path leaves the mapped inode unchanged, a rewrite in
    place does not."""
    monkeypatch.setattr(kexec.MappedFile, "CHUNK", 4096)  # several pieces
    data = bytes(range(256)) * 100 + b"tail"
    f = tmp_path / "initrd.img"
    f.write_bytes(data)
    with kexec.MappedFile(str(f)) as m:
        assert m.sha256() == hashlib.sha256(data).digest()
        assert m.sha256(5000) == hashlib.sha256(data[5000:]).digest()
        assert m.pread(4, 256) == data[256:260] and not m.changed()
        new = tmp_path / "initrd.img.new"
        new.write_bytes(b"other")
        new.rename(f)  # a package update: the mapping keeps the old inode
        assert not m.changed() and m.sha256() == hashlib.sha256(data).digest()
    g = tmp_path / "kernel"
    g.write_bytes(data)
    with kexec.MappedFile(str(g)) as m:
        with open(g, "r+b") as w:
            w.truncate(100)
        assert m.changed() and m.pread(4096) == data[:100]
        with pytest.raises(InputError, match="truncated while being digested"):
            m.sha256()


def test_mapped_file_metadata_changes_are_not_rewrites(tmp_path: Path) -> None:
    """A backup hard link kept across a rename-replacement (update-initramfs' .bak),
    chmod or chown move only the mapped inode's ctime: the bytes are the ones digested,
    so the image (and a restore of it) stays good.  A rewrite in place is a change."""
    data = b"\x1f\x8b" + bytes(range(256)) * 64
    f = tmp_path / "initrd.img"
    f.write_bytes(data)
    with kexec.MappedFile(str(f)) as m:
        os.link(f, tmp_path / "initrd.img.bak")
        new = tmp_path / "initrd.img.new"
        new.write_bytes(b"other")
        new.rename(f)
        os.chmod(tmp_path / "initrd.img.bak", 0o600)
        assert not m.changed()
        with open(tmp_path / "initrd.img.bak", "r+b") as w:  # the mapped inode itself
            w.write(b"XX")
            w.truncate(len(data) + 1)
        assert m.changed()
