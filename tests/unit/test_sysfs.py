"""The topology reader against captured trees (real guests, this host) and synthetic
ones, and every malformed file reported as one InputError naming file and line."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdumpd.arch.x86_64 import X86_64_PAGE_OFFSET
from kdumpd.commands.inspect import cpulist as inspect_cpulist
from kdumpd.core.errors import InputError
from kdumpd.core.topology import CrashNote, KernelText, MemRange, VmcoreInfo
from kdumpd.system.kexecsysfs import read_capabilities
from kdumpd.system.sysroot import parse_cpulist
from kdumpd.system.topologyreader import read_topology
from tests.fixtures import make_fixture

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CPU = "sys/devices/system/cpu"
MEM = "sys/devices/system/memory"


def fixture(name: str) -> Path:
    path = FIXTURES / name
    if not (path / "proc" / "iomem").exists():
        pytest.skip(f"fixture {name} not captured yet (tests/e2e/fixtures.py makes it)")
    return path


def copy(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(fixture(name), dest)
    return dest


def kernel_file(root: Path, rel: str) -> str:
    return (root / rel).read_text()


# ----------------------------------------------------------------- real guests


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_guest_after_hotplug_has_the_added_cpus_and_ram(kernel: str) -> None:
    before = read_topology(fixture(f"guest-{kernel}-before"))
    after = read_topology(fixture(f"guest-{kernel}-after"))

    # 6.1 registers a hot-added CPU on the ACPI event (present grows); 6.12 under
    # QEMU already lists every possible CPU as present at boot (with crash_notes) and
    # the hot-add shows as the CPU coming online.
    added_cpus = (set(after.present_cpus) - set(before.present_cpus)) | (
        set(after.online_cpus) - set(before.online_cpus)
    )
    assert added_cpus, "no CPU was hot-added between the snapshots"
    noted = {n.cpu for n in after.crash_notes}
    assert added_cpus <= noted
    assert added_cpus <= set(after.present_cpus)
    assert set(after.possible_cpus) == set(before.possible_cpus)

    new_ram = set(after.system_ram) - set(before.system_ram)
    assert MemRange(0x100000000, 0x11FFFFFFF) in new_ram  # the 512 MiB DIMM
    assert before.memory_block_size == after.memory_block_size
    assert after.memory_block_size is not None
    block = after.memory_block_size
    dimm_blocks = {b.index for b in after.memory_blocks} - {b.index for b in before.memory_blocks}
    assert dimm_blocks == set(range(0x100000000 // block, 0x120000000 // block))
    # A CPU's note buffer is allocated at boot: hotplug never moves it.
    for note in before.crash_notes:
        assert note in after.crash_notes


@pytest.mark.parametrize(
    "name", ["guest-6.1-before", "guest-6.1-after", "guest-6.12-before", "guest-6.12-after"]
)
def test_guest_values_are_what_the_kernel_printed(name: str) -> None:
    root = fixture(name)
    t = read_topology(root)
    assert t.arch == kernel_file(root, "proc/sys/kernel/arch").strip()
    for note in t.crash_notes:
        printed = kernel_file(root, f"{CPU}/cpu{note.cpu}/crash_notes").strip()
        assert note.address == int(printed, 16)
    for cpu in t.present_cpus:
        assert (root / CPU / f"cpu{cpu}" / "crash_notes").exists() == (
            cpu in {n.cpu for n in t.crash_notes}
        )
    for r in t.system_ram:
        assert f"{r.start:08x}-{r.end:08x} : System RAM" in kernel_file(root, "proc/iomem")
    (crash,) = t.crashkernel  # crashkernel=256M: one reservation (KASLR moves it)
    assert crash.size == 256 << 20
    assert f"  {crash.start:08x}-{crash.end:08x} : Crash kernel\n" in kernel_file(
        root, "proc/iomem"
    )
    addr, size = kernel_file(root, "sys/kernel/vmcoreinfo").split()
    assert t.vmcoreinfo == VmcoreInfo(int(addr, 16), int(size, 16))


def test_guest_61_shape() -> None:
    """QEMU ``-smp 1,maxcpus=4`` plus two hot-added CPUs, Debian 6.1 (no crash hotplug)."""
    root = fixture("guest-6.1-after")
    t = read_topology(root)
    assert t.possible_cpus == (0, 1, 2, 3)
    assert t.present_cpus == (0, 1, 2)
    assert [n.cpu for n in t.crash_notes] == [0, 1, 2]
    code = t.kernel_code
    assert code is not None
    assert f"  {code.start:08x}-{code.end:08x} : Kernel code\n" in kernel_file(root, "proc/iomem")
    assert t.vmcoreinfo is not None
    assert t.vmcoreinfo.size == 0x1024  # "%x" of VMCOREINFO_NOTE_SIZE
    assert t.capabilities.release is not None
    assert t.capabilities.release.startswith("6.1.")
    assert not t.capabilities.crash_hotplug_config  # 6.1 has no CONFIG_CRASH_HOTPLUG


@pytest.mark.parametrize("name", ["guest-6.1-after", "guest-6.12-after"])
def test_guest_kernel_text_from_kcore_matches_kallsyms_fallback(tmp_path: Path, name: str) -> None:
    root = copy(name, tmp_path)
    if not (root / "proc" / "kcore").exists():
        pytest.skip("guest fixture has no /proc/kcore headers")
    from_kcore = read_topology(root)
    assert from_kcore.kernel_text is not None
    assert from_kcore.kernel_text.source == "kcore"
    (root / "proc" / "kcore").unlink()
    fallback = read_topology(root)
    assert fallback.kernel_text == replace(from_kcore.kernel_text, source="kallsyms")
    # The captured guest runs with 5-level paging: the direct map is not the default.
    assert from_kcore.page_offset is not None
    assert from_kcore.page_offset & ((1 << 30) - 1) == 0
    assert fallback.page_offset == X86_64_PAGE_OFFSET


# ----------------------------------------------------------------- this host


def test_host_tree() -> None:
    t = read_topology(fixture("host-6.18"))
    assert t.arch == "x86_64"
    assert t.crash_notes == ()  # this host kernel has no crash_notes
    assert t.crashkernel == ()
    assert t.vmcoreinfo == VmcoreInfo(0x100C66000, 0x1024)
    assert t.kernel_text is not None
    assert t.kernel_text.source == "kallsyms-estimate"  # no _end without KALLSYMS_ALL
    assert t.kernel_text.vaddr == 0xFFFFFFFF81000000
    assert t.capabilities.kexec_crash_loaded is None
    assert t.capabilities.cpu_crash_hotplug is None
    assert t.memory_block_size == 0x8000000
    assert len(t.memory_blocks) == sum(1 for b in t.memory_blocks if b.state == "online")


@pytest.mark.skipif(not os.path.exists("/proc/iomem"), reason="no procfs here")
def test_reads_the_running_host() -> None:
    t = read_topology("/")
    assert t.online_cpus
    assert t.system_ram
    assert read_capabilities("/").release == os.uname().release


# ----------------------------------------------------------------- synthetic


def test_synthetic_before_after() -> None:
    before = read_topology(fixture("synthetic-x86_64-before"))
    after = read_topology(fixture("synthetic-x86_64-after"))
    assert [n.cpu for n in before.crash_notes] == [0, 1]
    assert [n.cpu for n in after.crash_notes] == [0, 1, 2, 3]
    assert after.crash_notes[3] == CrashNote(3, 0x3FCDC5C0, 368)
    assert set(after.system_ram) - set(before.system_ram) == {MemRange(0x100000000, 0x11FFFFFFF)}
    assert after.kernel_text == KernelText(0xFFFFFFFF94000000, 0x2200000, "kallsyms")
    caps = after.capabilities
    assert caps.cpu_crash_hotplug is True
    assert caps.crash_elfcorehdr_size == 917616
    assert caps.kexec_crash_size == 256 << 20
    assert caps.lockdown == "none"


def test_synthetic_virtio_mem_kcore_kaslr_and_missing_note_sizes() -> None:
    t = read_topology(fixture("synthetic-x86_64-virtio-mem"))
    assert t.kernel_text == KernelText(0xFFFFFFFFA8A00000, 0x21FF000, "kcore")
    assert t.page_offset == 0xFFFF9D2C40000000
    assert {n.size for n in t.crash_notes} == {1024}  # no crash_notes_size: MAX_NOTE_BYTES
    assert t.online_cpus == (0, 1, 3)
    assert MemRange(0x280000000, 0x2BFFFFFFF) in t.system_ram  # nested virtio_mem RAM
    assert t.crashkernel == (MemRange(0x0F000000, 0x1EFFFFFF), MemRange(0x260000000, 0x27FFFFFFF))
    assert sum(1 for b in t.memory_blocks if b.online is False) == 2
    assert t.capabilities.lockdown == "integrity"
    assert t.capabilities.crash_hotplug_config
    assert t.capabilities.cpu_crash_hotplug is False


def test_shipped_synthetic_trees_are_reproducible(tmp_path: Path) -> None:
    for name, make in make_fixture.SHIPPED.items():
        fresh = make_fixture.write_tree(tmp_path / name, make())
        assert read_topology(fresh) == read_topology(fixture(name)), name


def test_kcore_without_stext_uses_the_kernel_map_range(tmp_path: Path) -> None:
    tree = make_fixture.virtio_mem()
    tree.kallsyms = None
    # KASLR put this kernel beyond [0xffffffff80000000, +512 MiB): no text found.
    t = read_topology(make_fixture.write_tree(tmp_path / "t", tree))
    assert t.kernel_text is None
    assert t.page_offset == 0xFFFF9D2C40000000
    assert tree.kcore_loads is not None
    tree.kcore_loads = [(0xFFFFFFFF81234000, 0x1234000, 0x2000800), *tree.kcore_loads[1:]]
    t = read_topology(make_fixture.write_tree(tmp_path / "t", tree))
    assert t.kernel_text == KernelText(0xFFFFFFFF81200000, 0x2035000, "kcore-range")


def test_missing_optional_files_are_none(tmp_path: Path) -> None:
    tree = make_fixture.Tree(
        possible=[0],
        present=[0],
        online=[0],
        iomem="00001000-0009fbff : System RAM\n",
        vmcoreinfo=None,
        block_size=None,
        release=None,
        cpu_crash_hotplug=None,
        memory_crash_hotplug=None,
        crash_elfcorehdr_size=None,
        kexec_crash_loaded=None,
        kexec_crash_size=None,
        lockdown=None,
    )
    t = read_topology(make_fixture.write_tree(tmp_path / "t", tree))
    assert t.crash_notes == ()
    assert t.vmcoreinfo is None
    assert t.kernel_text is None
    assert t.memory_block_size is None
    assert t.memory_blocks == ()
    assert t.capabilities == type(t.capabilities)()
    assert t.page_offset == X86_64_PAGE_OFFSET


def test_hidden_kallsyms_addresses_count_as_absent(tmp_path: Path) -> None:
    tree = make_fixture.before()
    tree.kallsyms = "0000000000000000 T _text\n0000000000000000 T _stext\n0000000000000000 B _end\n"
    assert read_topology(make_fixture.write_tree(tmp_path / "t", tree)).kernel_text is None


def test_new_kexec_sysfs_location(tmp_path: Path) -> None:
    tree = make_fixture.before()
    tree.kexec_crash_loaded = None
    tree.kexec_crash_size = None
    tree.crash_elfcorehdr_size = None
    tree.extra = {
        "sys/kernel/kexec/crash_loaded": "1\n",
        "sys/kernel/kexec/crash_size": "536870912\n",
        "sys/kernel/kexec/crash_elfcorehdr_size": "917616\n",
    }
    caps = read_capabilities(make_fixture.write_tree(tmp_path / "t", tree))
    assert caps.kexec_crash_loaded is True
    assert caps.kexec_crash_size == 512 << 20
    assert caps.crash_elfcorehdr_size == 917616


def test_arch_explicit_then_file_then_kcore(tmp_path: Path) -> None:
    tree = make_fixture.virtio_mem()
    tree.arch = None
    root = make_fixture.write_tree(tmp_path / "t", tree)
    assert read_topology(root).arch == "x86_64"  # from kcore e_machine
    assert read_topology(root, arch="ppc64le").arch == "ppc64le"
    (root / "proc" / "kcore").unlink()
    with pytest.raises(InputError) as exc:
        read_topology(root)
    assert exc.value.source == "/proc/sys/kernel/arch"


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0\n", (0,)), ("0-3,8\n", (0, 1, 2, 3, 8)), ("\n", ()), ("1,3-4", (1, 3, 4))],
)
def test_parse_cpulist(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpulist(text, "/x") == cpus


# ----------------------------------------------------------------- malformed

# (file relative to the sysroot, content, expected line or None, words in the problem)
MALFORMED = [
    (f"{CPU}/possible", "0-3,x\n", 1, "cpulist"),
    (f"{CPU}/present", "3-1\n", 1, "not ascending"),
    (f"{CPU}/possible", "0-4000000000\n", 1, "above"),
    (f"{CPU}/online", "0-1\n2\n", 2, "one line"),
    (f"{CPU}/cpu1/crash_notes", "zz\n", 1, "hexadecimal"),
    (f"{CPU}/cpu1/crash_notes", "0x3fc5c5c0\n", 1, "without 0x"),
    (f"{CPU}/cpu1/crash_notes", "", 1, "empty"),
    (f"{CPU}/cpu0/crash_notes_size", "368 bytes\n", 1, "size"),
    (f"{CPU}/cpu0/crash_notes_size", "0\n", 1, "0"),
    ("proc/iomem", "00000000-00000fff : Reserved\nnot iomem\n", 2, "not a resource line"),
    ("proc/iomem", "00000000-00000fff : Reserved\n\xff\n", 2, "non-ASCII"),
    ("sys/kernel/vmcoreinfo", "0x2a8e000\n", 1, "ADDRESS SIZE"),
    ("sys/kernel/vmcoreinfo", "0xzz 1024\n", 1, "hexadecimal"),
    (f"{MEM}/block_size_bytes", "0x8000000\n", 1, "without 0x"),
    (f"{MEM}/memory3/online", "2\n", 1, "0 or 1"),
    (f"{MEM}/memory3/state", "On Line\n", 1, "state"),
    (f"{CPU}/crash_hotplug", "yes\n", 1, "0 or 1"),
    (f"{MEM}/crash_hotplug", "", 1, "empty"),
    ("sys/kernel/crash_elfcorehdr_size", "-5\n", 1, "decimal"),
    ("sys/kernel/kexec_crash_size", "256M\n", 1, "decimal"),
    ("sys/kernel/kexec_crash_loaded", "1\n1\n", 2, "one line"),
    ("sys/kernel/security/lockdown", "none integrity\n", 1, "bracket"),
    ("proc/kallsyms", "this is not kallsyms\n", 1, "ADDRESS TYPE NAME"),
    ("proc/kallsyms", "ffffffff94000000 T _text\nzz T _end\n", 2, "_end"),
    ("proc/kcore", "not an ELF file at all" * 4, None, "not an ELF"),
]


def _write(root: Path, rel: str, content: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("latin-1"))


@pytest.mark.parametrize(("rel", "content", "line", "words"), MALFORMED)
def test_malformed_file_is_one_input_error(
    tmp_path: Path, rel: str, content: str, line: int | None, words: str
) -> None:
    root = make_fixture.write_tree(tmp_path / "t", make_fixture.after())
    _write(root, rel, content)
    with pytest.raises(InputError) as exc:
        read_topology(root)
    err = exc.value
    assert err.source == "/" + rel
    assert err.line == line
    assert words in err.problem
    assert "\n" not in str(err)


def test_truncated_kcore_program_headers(tmp_path: Path) -> None:
    root = make_fixture.write_tree(tmp_path / "t", make_fixture.virtio_mem())
    data = (root / "proc" / "kcore").read_bytes()
    (root / "proc" / "kcore").write_bytes(data[:100])
    with pytest.raises(InputError) as exc:
        read_topology(root)
    assert exc.value.source == "/proc/kcore"
    assert "program headers" in exc.value.problem


@pytest.mark.parametrize("rel", ["proc/iomem", f"{CPU}/possible", f"{CPU}/online"])
def test_required_file_missing(tmp_path: Path, rel: str) -> None:
    root = make_fixture.write_tree(tmp_path / "t", make_fixture.after())
    (root / rel).unlink()
    with pytest.raises(InputError) as exc:
        read_topology(root)
    assert exc.value.source == "/" + rel
    assert "missing" in exc.value.problem


def test_directory_where_a_file_belongs(tmp_path: Path) -> None:
    root = make_fixture.write_tree(tmp_path / "t", make_fixture.after())
    (root / "sys/kernel/vmcoreinfo").unlink()
    (root / "sys/kernel/vmcoreinfo").mkdir()
    with pytest.raises(InputError) as exc:
        read_topology(root)
    assert exc.value.source == "/sys/kernel/vmcoreinfo"


# ----------------------------------------------------------------- scale


def test_big_tree_reads_every_cpu_and_block(tmp_path: Path) -> None:
    """8,192 CPUs and blocks (the timing lives in bench/topology.py, not here)."""
    root = make_fixture.write_tree(tmp_path / "big", make_fixture.big())
    started = time.perf_counter()
    t = read_topology(root)
    elapsed = time.perf_counter() - started
    assert len(t.crash_notes) == 8192
    assert t.crash_notes[-1] == CrashNote(8191, 0x3FC1C5C0 + 8191 * 0x40000, 368)
    assert len(t.memory_blocks) == 8192
    assert len(t.system_ram) == 8192 - 8 + 2
    print(f"read_topology on 8,192 CPUs/blocks: {elapsed * 1e3:.0f} ms")


# ----------------------------------------------------------------- properties

cpu_sets = st.sets(st.integers(0, 8191), max_size=64)


@given(cpu_sets)
def test_cpulist_round_trip(cpus: set[int]) -> None:
    text = make_fixture.cpulist(cpus)
    assert parse_cpulist(text, "/x") == tuple(sorted(cpus))
    assert inspect_cpulist(tuple(sorted(cpus))) + "\n" == (text if cpus else "none\n")


@given(
    possible=st.sets(st.integers(0, 63), min_size=1, max_size=16),
    data=st.data(),
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_trees_read_back(possible: set[int], data: st.DataObject) -> None:
    present = data.draw(st.sets(st.sampled_from(sorted(possible))))
    online = data.draw(st.sets(st.sampled_from(sorted(present)))) if present else set()
    with_notes = data.draw(st.sets(st.sampled_from(sorted(present)))) if present else set()
    addrs = {c: data.draw(st.integers(0, (1 << 52) - 1)) for c in with_notes}
    size = data.draw(st.one_of(st.none(), st.integers(1, 4096)))
    blocks = data.draw(
        st.dictionaries(st.integers(0, 4095), st.sampled_from(["online", "offline"]), max_size=8)
    )
    tree = make_fixture.Tree(
        possible=sorted(possible),
        present=sorted(present),
        online=sorted(online),
        iomem="00001000-0009fbff : System RAM\n",
        crash_notes=addrs,
        crash_notes_size=size,
        blocks=blocks,
    )
    with tempfile.TemporaryDirectory() as tmp:
        t = read_topology(make_fixture.write_tree(Path(tmp) / "t", tree))
    assert t.possible_cpus == tuple(sorted(possible))
    assert t.present_cpus == tuple(sorted(present))
    assert t.online_cpus == tuple(sorted(online))
    expected_size = 1024 if size is None else size
    assert t.crash_notes == tuple(CrashNote(c, addrs[c], expected_size) for c in sorted(addrs))
    assert [(b.index, b.state, b.online) for b in t.memory_blocks] == [
        (i, s, s == "online") for i, s in sorted(blocks.items())
    ]


def test_guest_612_shape() -> None:
    """Debian 6.12: CONFIG_CRASH_HOTPLUG files present, all possible CPUs present."""
    root = fixture("guest-6.12-after")
    t = read_topology(root)
    caps = t.capabilities
    assert caps.crash_hotplug_config
    assert caps.crash_elfcorehdr_size == int(kernel_file(root, "sys/kernel/crash_elfcorehdr_size"))
    assert caps.crash_elfcorehdr_size == (2 + 8192 + 8192) * 56  # NR_CPUS 8192, 8192 ranges
    assert caps.release is not None
    assert caps.release.startswith("6.12.")
    assert [n.cpu for n in t.crash_notes] == list(t.present_cpus)
    sizes = {int(kernel_file(root, f"{CPU}/cpu{n.cpu}/crash_notes_size")) for n in t.crash_notes}
    assert {n.size for n in t.crash_notes} == sizes


def test_kexec_crash_size_busy_during_a_load_is_none_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_fixture.write_tree(tmp_path / "t", make_fixture.after())

    def busy_crash_size(path: str) -> BinaryIO:
        if path.endswith("/kexec_crash_size"):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        return open(path, "rb")

    with caplog.at_level(logging.INFO, logger="kdumpd.system.sysroot"):
        caps = read_capabilities(root, opener=busy_crash_size)
    assert caps.kexec_crash_size is None
    assert caps.kexec_crash_loaded is True
    assert "/sys/kernel/kexec_crash_size: busy" in caplog.text
    assert read_capabilities(root).kexec_crash_size == 256 << 20


def test_other_read_errors_are_one_input_error(tmp_path: Path) -> None:
    root = make_fixture.write_tree(tmp_path / "t", make_fixture.after())

    def eio(path: str) -> BinaryIO:
        if path.endswith("/osrelease"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
        return open(path, "rb")

    with pytest.raises(InputError) as exc:
        read_capabilities(root, opener=eio)
    assert str(exc.value) == "/proc/sys/kernel/osrelease: cannot read: Input/output error"


@pytest.mark.parametrize(
    "name", ["guest-6.1-after", "guest-6.12-after", "synthetic-x86_64-virtio-mem"]
)
def test_kcore_program_headers_agree_with_readelf(name: str) -> None:
    """Our kcore reading (pyelftools) against an independent parser: binutils readelf."""
    import re
    import subprocess

    from kdumpd.system import kernelfacts
    from kdumpd.system.sysroot import Sysroot

    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("binutils readelf is not installed")
    root = fixture(name)
    if not (root / "proc/kcore").exists():
        pytest.skip(f"{name} has no /proc/kcore headers")
    parsed = kernelfacts._kcore_loads(Sysroot(root))
    assert parsed is not None
    out = subprocess.run(
        [readelf, "-h", "-l", "-W", str(root / "proc/kcore")],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    expected = [
        (int(vaddr, 16), int(memsz, 16))
        for vaddr, memsz in re.findall(
            r"^\s+LOAD\s+\S+\s+(0x[0-9a-f]+)\s+\S+\s+\S+\s+(0x[0-9a-f]+)", out, re.M
        )
    ]
    assert expected, out
    assert parsed == (expected, "EM_X86_64")
    assert "Advanced Micro Devices X86-64" in out


def test_topology_reader_keeps_kernel_facts_and_rereads_the_rest(tmp_path: Path) -> None:
    """kallsyms/kcore are read once (fixed until reboot); iomem is re-read every time."""
    import shutil

    from kdumpd.system.topologyreader import TopologyReader

    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "guest-6.12-before", root)
    reader = TopologyReader(root)
    first = reader()
    assert first.kernel_text is not None

    (root / "proc/kallsyms").write_text("garbage that would not parse\n")
    iomem = root / "proc/iomem"
    iomem.write_text(iomem.read_text() + "200000000-21fffffff : System RAM\n")
    second = reader()

    assert second.kernel_text == first.kernel_text
    assert second.page_offset == first.page_offset
    assert second.system_ram[-1].start == 0x200000000
    assert len(second.system_ram) == len(first.system_ram) + 1


def test_topology_reader_does_not_reread_lock_taking_capability_files(tmp_path: Path) -> None:
    """crash_hotplug and kexec_crash_size take the kexec lock when read; the burst path
    must not read them again (a kernel hotplug update finding the lock taken is skipped)."""
    import shutil

    from kdumpd.system.kexecsysfs import read_capabilities
    from kdumpd.system.topologyreader import TopologyReader

    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "guest-6.12-after", root)
    reader = TopologyReader(root)
    first = reader().capabilities
    assert first.kexec_crash_size == 256 << 20

    (root / "sys/kernel/kexec_crash_size").write_text("1\n")
    (root / "sys/devices/system/cpu/crash_hotplug").write_text("1\n")
    assert reader().capabilities == first
    fresh = read_capabilities(root)
    assert fresh.kexec_crash_size == 1
    assert fresh.cpu_crash_hotplug is True


def test_iomem_with_hidden_addresses_is_an_input_error(tmp_path: Path) -> None:
    """Without CAP_SYS_ADMIN every /proc/iomem range reads 00000000-00000000."""
    import shutil

    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "guest-6.12-after", root)
    iomem = root / "proc/iomem"
    lines = []
    for line in iomem.read_text().splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        name = line.split(" : ", 1)[1]
        lines.append(f"{indent}00000000-00000000 : {name}")
    assert len(lines) > 10  # the fixture's real iomem, names kept
    iomem.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"^/proc/iomem: every address reads 0"):
        read_topology(root)


def test_read_crash_loaded_old_and_new_sysfs_names(tmp_path: Path) -> None:
    from kdumpd.system.kexecsysfs import read_crash_loaded

    assert read_crash_loaded(tmp_path) is None
    new = tmp_path / "sys/kernel/kexec/crash_loaded"
    new.parent.mkdir(parents=True)
    new.write_text("1\n")
    assert read_crash_loaded(tmp_path) is True
    old = tmp_path / "sys/kernel/kexec_crash_loaded"
    old.write_text("0\n")
    assert read_crash_loaded(tmp_path) is False  # the classic name wins when both exist
    old.write_text("yes\n")
    with pytest.raises(InputError, match=r"^/sys/kernel/kexec_crash_loaded:1: "):
        read_crash_loaded(tmp_path)
