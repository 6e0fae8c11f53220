"""The x86_64 segment image as the daemon builds it — the real builder, the real
purgatory patcher (default_purgatory) and the built blob — with the purgatory segment
run on an emulated CPU (Unicorn) and every other segment mapped at its ``mem``.

The loader tests use a fake purgatory and the purgatory tests hand-made regions; this
is where the two meet: the entry, boot_params address and region list the builder
writes must be the ones the blob checks and jumps with."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kdumpd.arch.x86_64.bzimage import ENTRY64_OFFSET
from kdumpd.arch.x86_64.loader import X86ImageBuilder, default_purgatory
from kdumpd.arch.x86_64.purgatory import Purgatory
from kdumpd.core.segment import SegmentKind

from .purgatory_support import build_blob, is_x86_64_host
from .test_x86_loader import crash_image, inputs, topology

unicorn = pytest.importorskip("unicorn")
x86 = pytest.importorskip("unicorn.x86_const")

pytestmark = pytest.mark.skipif(
    not is_x86_64_host(), reason="the x86_64 purgatory is built on x86_64 hosts only"
)

STACK_PAGE = 0x2000_0000  # the kernel's control page: outside every segment
COM1 = 0x3F8


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_blob(Path(tmp_path_factory.mktemp("purgatory-build"))).read_bytes()


@dataclass
class Outcome:
    serial: str = ""
    ports: list[tuple[int, int]] = field(default_factory=list)
    rip_at_kernel: int | None = None
    rsi_at_kernel: int | None = None


def run_image(segments: list[tuple[int, int, bytes]], entry: int, kernel_entry: int) -> Outcome:
    """Map each (mem, memsz, bytes) segment, start at ``entry`` (the purgatory) and stop
    at ``kernel_entry`` or at the reset."""
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    for mem, memsz, data in segments:
        uc.mem_map(mem, memsz)
        uc.mem_write(mem, data)
    uc.mem_map(STACK_PAGE, 0x1000)
    uc.reg_write(x86.UC_X86_REG_RSP, STACK_PAGE + 0x1000 - 8)
    out = Outcome()

    def on_out(uc: object, port: int, size: int, value: int, _: object) -> None:
        out.ports.append((port, value))
        if port == COM1:
            out.serial += chr(value)
        if port == 0xCF9 and value == 0x06:
            uc.emu_stop()  # type: ignore[attr-defined]

    def on_in(uc: object, port: int, size: int, _: object) -> int:
        return 0x60 if port == COM1 + 5 else 0xFF  # LSR: transmitter empty

    def at_kernel(uc: unicorn.Uc, address: int, size: int, _: object) -> None:
        out.rip_at_kernel = address
        out.rsi_at_kernel = uc.reg_read(x86.UC_X86_REG_RSI)
        uc.emu_stop()

    uc.hook_add(unicorn.UC_HOOK_INSN, on_out, None, 1, 0, x86.UC_X86_INS_OUT)
    uc.hook_add(unicorn.UC_HOOK_INSN, on_in, None, 1, 0, x86.UC_X86_INS_IN)
    uc.hook_add(unicorn.UC_HOOK_CODE, at_kernel, None, kernel_entry, kernel_entry)
    uc.emu_start(entry, 0, count=50_000_000)
    return out


def build_real(blob: bytes) -> tuple[dict[SegmentKind, tuple[int, int, bytes]], int, int]:
    """(kind -> (mem, memsz, bytes), purgatory entry, boot_params address)."""
    t = topology()
    image = crash_image(t)
    builder = X86ImageBuilder()  # the default factory: the real patcher
    assert builder.purgatory_factory is default_purgatory
    seg = builder.build(dataclasses.replace(inputs(), purgatory=blob), t, image.elfcorehdr)
    assert isinstance(seg.purgatory, Purgatory)
    segs = {s.kind: (s.mem, s.memsz, bytes(s.buf)) for s in seg.plan.segments}
    return segs, seg.plan.entry, segs[SegmentKind.SETUP][0]


def test_the_built_image_starts_the_kernel_with_its_boot_params(blob: bytes) -> None:
    segs, entry, boot_params = build_real(blob)
    assert entry == segs[SegmentKind.PURGATORY][0]
    kernel_entry = segs[SegmentKind.KERNEL][0] + ENTRY64_OFFSET
    r = run_image(list(segs.values()), entry, kernel_entry)
    assert r.serial == (
        f"kdumpd purgatory: 4 regions ok, starting the capture kernel at {kernel_entry:#x}\r\n"
    )
    assert r.rip_at_kernel == segs[SegmentKind.KERNEL][0] + 0x200
    assert r.rsi_at_kernel == boot_params
    assert [p for p in r.ports if p[0] != COM1] == []


def test_one_flipped_initrd_byte_never_reaches_the_kernel(blob: bytes) -> None:
    segs, entry, _ = build_real(blob)
    mem, memsz, data = segs[SegmentKind.INITRD]
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x01
    segs[SegmentKind.INITRD] = (mem, memsz, bytes(flipped))
    kernel_entry = segs[SegmentKind.KERNEL][0] + ENTRY64_OFFSET
    r = run_image(list(segs.values()), entry, kernel_entry)
    assert r.rip_at_kernel is None
    assert r.serial == (
        "kdumpd purgatory: region 3 sha256 mismatch, capture kernel not started, resetting\r\n"
    )
    assert [p for p in r.ports if p[0] != COM1] == [(0xCF9, 0x02), (0xCF9, 0x06)]
