"""The /proc/iomem parser: round trips of random resource trees, every malformed shape
reported with its line, and the lines a crash image depends on."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdumpd.core.errors import InputError
from kdumpd.core.iomem import parse_iomem, render_iomem
from kdumpd.core.topology import MemRange, Resource, Topology

U64 = (1 << 64) - 1

# Names as the kernel has them: printable, may contain " : ", may be empty.
names = st.one_of(
    st.sampled_from(
        [
            "System RAM",
            "System RAM (virtio_mem)",
            "System RAM (kmem)",
            "Crash kernel",
            "Kernel code",
            "Reserved",
            "PCI Bus 0000:00",
            "ACPI Tables",
            "a : b : c",
            "",
            "trailing space ",
        ]
    ),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
)


@st.composite
def subtrees(draw: st.DrawFn, lo: int, hi: int, depth: int) -> list[Resource]:
    """Disjoint, ascending children inside [lo, hi], each with its own subtree."""
    n = draw(st.integers(0, 3 if depth < 4 else 0))
    if n == 0 or hi - lo < 2 * n:
        return []
    cuts = sorted(draw(st.lists(st.integers(lo, hi), min_size=2 * n, max_size=2 * n)))
    out: list[Resource] = []
    prev_end = lo - 1
    for i in range(n):
        s, e = cuts[2 * i], cuts[2 * i + 1]
        if s <= prev_end:
            continue
        out.append(Resource(s, e, draw(names), depth))
        out.extend(draw(subtrees(s, e, depth + 1)))
        prev_end = e
    return out


trees = subtrees(0, U64, 0)


@given(trees)
def test_round_trip(resources: list[Resource]) -> None:
    assert parse_iomem(render_iomem(resources)) == tuple(resources)


@given(trees, st.sampled_from(["", "\n", "\n\n", "\n  \n\n"]))
def test_trailing_blank_lines_and_missing_final_newline(
    resources: list[Resource], tail: str
) -> None:
    text = render_iomem(resources)
    assert parse_iomem(text.rstrip("\n") + tail) == tuple(resources)


@given(trees, st.data())
def test_blank_line_inside_is_ignored_and_later_errors_keep_their_line(
    resources: list[Resource], data: st.DataObject
) -> None:
    lines = render_iomem(resources).splitlines()
    at = data.draw(st.integers(0, len(lines)))
    lines.insert(at, "")
    assert parse_iomem("\n".join(lines)) == tuple(resources)
    lines.append("garbage")
    with pytest.raises(InputError) as exc:
        parse_iomem("\n".join(lines), "/x/iomem")
    assert exc.value.line == len(lines)
    assert exc.value.source == "/x/iomem"


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_arbitrary_text_parses_or_raises_input_error(text: str) -> None:
    try:
        result = parse_iomem(text)
    except InputError as err:
        assert err.line is None or 1 <= err.line <= text.count("\n") + 1
        assert str(err).startswith("/proc/iomem:")
    else:
        assert all(r.start <= r.end for r in result)


@given(trees, st.data())
def test_corrupting_one_line_names_that_line(
    resources: list[Resource], data: st.DataObject
) -> None:
    if not resources:
        return
    lines = render_iomem(resources).splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    lines[i] = lines[i].replace(" : ", " ; ", 1)
    with pytest.raises(InputError) as exc:
        parse_iomem("\n".join(lines) + "\n")
    assert exc.value.line == i + 1


QEMU_612 = """\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000f0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-7ffdffff : System RAM
  0f000000-1effffff : Crash kernel
  29a00000-2a8027d6 : Kernel code
  2aa00000-2ad8afff : Kernel rodata
7ffe0000-7fffffff : Reserved
100000000-27fffffff : System RAM
  260000000-27fffffff : Crash kernel
280000000-37fffffff : virtio0
  280000000-2bfffffff : System RAM (virtio_mem)
3c0000000-3ffffffff : dax0.0
  3c0000000-3ffffffff : System RAM (kmem)
fd00000000-ffffffffff : Reserved
"""


def test_realistic_tree_nested_ram_crash_low_high_kernel_code() -> None:
    res = parse_iomem(QEMU_612)
    assert len(res) == 17
    topo = Topology("x86_64", (0,), (0,), (0,), (), res)
    assert topo.system_ram == (
        MemRange(0x1000, 0x9FBFF),
        MemRange(0x100000, 0x7FFDFFFF),
        MemRange(0x100000000, 0x27FFFFFFF),
        MemRange(0x280000000, 0x2BFFFFFFF),
        MemRange(0x3C0000000, 0x3FFFFFFFF),
    )
    assert topo.crashkernel == (
        MemRange(0x0F000000, 0x1EFFFFFF),
        MemRange(0x260000000, 0x27FFFFFFF),
    )
    assert topo.kernel_code == MemRange(0x29A00000, 0x2A8027D6)
    assert res[13] == Resource(0x280000000, 0x2BFFFFFFF, "System RAM (virtio_mem)", 1)
    assert res[-1] == Resource(0xFD00000000, 0xFFFFFFFFFF, "Reserved", 0)


def test_full_width_64_bit_addresses_and_uppercase() -> None:
    res = parse_iomem("0000000000000000-ffffffffffffffff : all\n  FFFF0000-FFFFFFFF : Up\n")
    assert res == (Resource(0, U64, "all", 0), Resource(0xFFFF0000, 0xFFFFFFFF, "Up", 1))


def test_name_keeps_colons_and_spaces() -> None:
    (r,) = parse_iomem("00000000-00000fff : PCI ECAM 0000 [bus 00-ff] : x \n")
    assert r.name == "PCI ECAM 0000 [bus 00-ff] : x "


def test_empty_text_is_no_resources() -> None:
    assert parse_iomem("") == ()
    assert parse_iomem("\n\n") == ()


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("00000000-00000fff : a\nzz-10 : b\n", 2, "not a resource line"),
        ("00000000-00000fff : a\n00001000-00001fff\n", 2, "not a resource line"),
        ("00000000-00000fff a\n", 1, "not a resource line"),
        ("\t00000000-00000fff : a\n", 1, "not a resource line"),
        ("0x0-0xfff : a\n", 1, "not a resource line"),
        ("00000000-00000fff : a\n 00000000-00000fff : b\n", 2, "multiple of 2"),
        ("00002000-00000fff : a\n", 1, "above its end"),
        (
            "00000000-0000ffff : a\n    00000000-00000fff : b\n",
            2,
            "nesting jumps from depth 0 to 2",
        ),
        ("  00000000-00000fff : a\n", 1, "under no parent"),
        ("00000000-00000fff : a\n  00000000-00001fff : b\n", 2, "not inside its parent"),
        ("00001000-00001fff : a\n  00000000-00001fff : b\n", 2, "not inside its parent"),
        ("00000000-10000000000000000 : a\n", 1, "64 bits"),
        ("00000000-00000fff : a\n\n\nnonsense\n", 4, "'nonsense'"),
        ("00000000-00000fff : a\n" + "x" * 200 + "\n", 2, "..."),
    ],
)
def test_malformed_names_file_and_line(text: str, line: int, needle: str) -> None:
    with pytest.raises(InputError) as exc:
        parse_iomem(text, "/proc/iomem")
    err = exc.value
    assert err.source == "/proc/iomem"
    assert err.line == line
    assert needle in err.problem
    assert str(err).startswith(f"/proc/iomem:{line}: ")
    assert "\n" not in str(err)


def test_depth_returns_to_a_shallower_parent() -> None:
    text = (
        "00000000-0000ffff : a\n"
        "  00000000-00000fff : b\n"
        "    00000000-000000ff : c\n"
        "  00001000-00001fff : d\n"
        "00010000-0001ffff : e\n"
        "  00010000-00010fff : f\n"
    )
    assert [r.depth for r in parse_iomem(text)] == [0, 1, 2, 1, 0, 1]
    bad = text.replace("  00010000-00010fff : f", "  00000000-00000fff : f")
    with pytest.raises(InputError) as exc:
        parse_iomem(bad)
    assert exc.value.line == 6


def test_large_file_shape() -> None:
    """8,192 ranges with a nested child each parse to 16,384 resources (speed: bench/)."""
    res = []
    for i in range(8192):
        s = 0x100000000 + i * 0x10000000
        res += [Resource(s, s + 0x7FFFFFF, "System RAM", 0)]
        res += [Resource(s, s + 0x7FFFFFF, "System RAM (kmem)", 1)]
    parsed = parse_iomem(render_iomem(res))
    assert parsed == tuple(res)
    assert len(Topology("x86_64", (), (), (), (), parsed).system_ram) == 16384
