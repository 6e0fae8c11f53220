"""The real blob run on an emulated x86_64 CPU (Unicorn), in the state the kernel's
relocate_kernel leaves: long mode, flat identity addresses, IF = 0, a stack in a
foreign page, no GDT of ours.  It must load its own GDT wherever it was loaded, start
the kernel with the boot protocol's registers when every region checks out, and on a
corrupt byte print its line, never reach the kernel, and reset (0xCF9) or halt."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kdumpd.arch.x86_64.purgatory import Policy, Purgatory, RegionFlag

from .purgatory_support import build_blob, is_x86_64_host
from .test_purgatory_verify import real_elfcorehdr

unicorn = pytest.importorskip("unicorn")
x86 = pytest.importorskip("unicorn.x86_const")

pytestmark = pytest.mark.skipif(
    not is_x86_64_host(), reason="the x86_64 purgatory is built on x86_64 hosts only"
)

KERNEL = 0x2000_0000
INITRD = 0x2400_0000
ELFCOREHDR = 0x2800_0000
BOOT_PARAMS = 0x2C00_0000
CONTROL_PAGE = 0x3000_0000
COM1 = 0x3F8
GPRS = ("rax", "rbx", "rcx", "rdx", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13")
GPRS += ("r14", "r15")


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_blob(Path(tmp_path_factory.mktemp("purgatory-build"))).read_bytes()


@dataclass
class Run:
    serial: str = ""
    ports: list[tuple[int, int]] = field(default_factory=list)
    at_kernel: dict[str, int] | None = None
    gdtr: tuple[int, int] | None = None
    idtr: tuple[int, int] | None = None
    gdt: bytes = b""
    foreign_writes: list[int] = field(default_factory=list)
    halted_at: int | None = None


def run(
    blob: bytes,
    load: int,
    *,
    corrupt: int | None = None,
    at: int | None = None,
    policy: Policy | None = None,
) -> Run:
    """Run the blob loaded at ``load``; ``corrupt``: flip a bit in that segment (0 kernel,
    1 initrd, 2 boot_params, 3 elfcorehdr) at offset ``at`` (default: a third in)."""
    rng = random.Random(load)
    kernel = bytearray(rng.randbytes(0x9000))
    initrd = bytearray(rng.randbytes(0x3001))
    boot = bytearray(rng.randbytes(0x1000))
    core = real_elfcorehdr()
    p = Purgatory(blob)
    p.configure(
        boot_params=BOOT_PARAMS,
        kernel_entry=KERNEL + 0x200,
        **({"policy": policy} if policy is not None else {}),
    )
    p.set_region(0, KERNEL, kernel)
    p.set_region(1, INITRD, initrd)
    p.set_region(2, BOOT_PARAMS, boot)
    p.set_region(3, ELFCOREHDR, core, RegionFlag.ELF_STRUCTURAL)
    segments = {KERNEL: kernel, INITRD: initrd, BOOT_PARAMS: boot, ELFCOREHDR: core}
    if corrupt is not None:  # after the digests were computed
        target = list(segments.values())[corrupt]
        target[len(target) // 3 if at is None else at] ^= 0x40

    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.mem_map(load, p.memsz)
    uc.mem_write(load, bytes(p.buffer))
    for addr, data in segments.items():
        uc.mem_map(addr, (len(data) + 0xFFF) & ~0xFFF)
        uc.mem_write(addr, bytes(data))
    uc.mem_map(CONTROL_PAGE, 0x1000)
    uc.reg_write(x86.UC_X86_REG_RSP, CONTROL_PAGE + 0x1000 - 8)
    result = Run()

    def on_out(uc: object, port: int, size: int, value: int, _: object) -> None:
        result.ports.append((port, value))
        if port == COM1:
            result.serial += chr(value)
        if port == 0xCF9 and value == 0x06:
            uc.emu_stop()  # type: ignore[attr-defined]

    def on_in(uc: object, port: int, size: int, _: object) -> int:
        return 0x60 if port == COM1 + 5 else 0xFF  # LSR: transmitter empty

    def at_kernel(uc: unicorn.Uc, address: int, size: int, _: object) -> None:
        regs = {name: uc.reg_read(getattr(x86, f"UC_X86_REG_{name.upper()}")) for name in GPRS}
        for name in ("rsi", "rsp", "rflags", "cs", "ds", "es", "ss", "fs", "gs"):
            regs[name] = uc.reg_read(getattr(x86, f"UC_X86_REG_{name.upper()}"))
        result.at_kernel = regs
        _, base, limit, _ = uc.reg_read(x86.UC_X86_REG_GDTR)
        result.gdtr = (base, limit)
        result.gdt = bytes(uc.mem_read(base, limit + 1))
        uc.emu_stop()

    def on_write(uc: object, access: int, address: int, size: int, value: int, _: object) -> None:
        if not load <= address < load + p.memsz:
            result.foreign_writes.append(address)

    uc.hook_add(unicorn.UC_HOOK_INSN, on_out, None, 1, 0, x86.UC_X86_INS_OUT)
    uc.hook_add(unicorn.UC_HOOK_INSN, on_in, None, 1, 0, x86.UC_X86_INS_IN)
    uc.hook_add(unicorn.UC_HOOK_CODE, at_kernel, None, KERNEL + 0x200, KERNEL + 0x200)
    uc.hook_add(unicorn.UC_HOOK_MEM_WRITE, on_write)
    uc.emu_start(load, 0, count=20_000_000)
    rip = uc.reg_read(x86.UC_X86_REG_RIP)
    if result.at_kernel is None and uc.mem_read(rip - 1, 1) == b"\xf4":
        result.halted_at = rip - 1  # stopped by hlt
        _, base, limit, _ = uc.reg_read(x86.UC_X86_REG_IDTR)
        result.idtr = (base, limit)
    return result


@pytest.mark.parametrize("load", [0x0100_0000, 0x7FE0_3000, 0x1_2345_6000])
def test_good_image_starts_the_kernel_with_the_boot_protocol_state(blob: bytes, load: int) -> None:
    r = run(blob, load)
    assert r.serial == (
        f"kdumpd purgatory: 4 regions ok, starting the capture kernel at {KERNEL + 0x200:#x}\r\n"
    )
    assert {port for port, _ in r.ports} == {COM1}
    assert r.at_kernel is not None, "the kernel entry was never reached"
    regs = r.at_kernel
    assert regs["rsi"] == BOOT_PARAMS
    assert {name: regs[name] for name in GPRS} == dict.fromkeys(GPRS, 0)
    assert regs["rflags"] & (1 << 9) == 0  # IF
    assert regs["rflags"] & (1 << 10) == 0  # DF
    assert (regs["cs"], regs["ds"], regs["es"], regs["ss"], regs["fs"], regs["gs"]) == (
        0x10,
        0x18,
        0x18,
        0x18,
        0x18,
        0x18,
    )
    assert load < regs["rsp"] <= load + Purgatory(blob).memsz  # its own stack
    # the GDT it loaded is inside the segment, wherever that was put
    base, limit = r.gdtr  # type: ignore[misc]
    assert load + 0x400 <= base < load + len(blob) and limit == 31
    null0, null1, code, data = struct.unpack("<4Q", r.gdt)
    assert (null0, null1) == (0, 0)
    assert code & 0x0020_9800_0000_0000 == 0x0020_9800_0000_0000  # L, present, code
    assert (code >> 54) & 1 == 0  # D clear for 64-bit code
    assert data & 0x00C0_9200_0000_FFFF == 0x00C0_9200_0000_FFFF  # 4 GiB flat writable
    assert r.foreign_writes == []  # only its own segment (stack, nothing else)


@pytest.mark.parametrize(("corrupt", "what"), [(0, "sha256 mismatch"), (1, "sha256 mismatch")])
def test_a_corrupt_byte_never_reaches_the_kernel_and_resets(
    blob: bytes, corrupt: int, what: str
) -> None:
    r = run(blob, 0x0400_0000, corrupt=corrupt)
    assert r.at_kernel is None
    assert r.serial == (
        f"kdumpd purgatory: region {corrupt} {what}, capture kernel not started, resetting\r\n"
    )
    assert [pv for pv in r.ports if pv[0] != COM1] == [(0xCF9, 0x02), (0xCF9, 0x06)]


def test_the_elfcorehdr_is_checked_for_its_shape_not_its_bytes(blob: bytes) -> None:
    # a 6.6+ kernel rewrites it in place: other contents still start the kernel
    assert run(blob, 0x0400_0000, corrupt=3, at=100).at_kernel is not None
    r = run(blob, 0x0400_0000, corrupt=3, at=0)  # no \x7fELF
    assert r.at_kernel is None
    assert r.serial == (
        "kdumpd purgatory: region 3 is not an ELF64 core header, "
        "capture kernel not started, resetting\r\n"
    )


def test_halt_policy_halts_with_an_nmi_safe_idt(blob: bytes) -> None:
    load = 0x0500_0000
    r = run(blob, load, corrupt=2, policy=Policy.SERIAL)
    assert r.at_kernel is None
    assert r.serial.startswith("kdumpd purgatory: region 2 sha256 mismatch,")
    assert r.serial.endswith("halting\r\n")
    assert [pv for pv in r.ports if pv[0] != COM1] == []  # no reset
    assert r.halted_at is not None and load <= r.halted_at < load + len(blob)
    base, limit = r.idtr  # type: ignore[misc]
    assert limit == 3 * 16 - 1 and load <= base < load + Purgatory(blob).memsz
