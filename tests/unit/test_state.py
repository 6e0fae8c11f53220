from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdumpd.daemon.state import DaemonState, ImageState, StateStore


def test_update_reports_only_changed_fields() -> None:
    store = StateStore()
    seen: list[Mapping[str, Any]] = []
    store.subscribe(lambda _s, changed: seen.append(dict(changed)))

    changed = store.update(generation=1, backend="dry-run")
    assert changed == {"generation": 1, "backend": "dry-run"}
    assert store.update(generation=1) == {}
    assert store.update(generation=2, backend="dry-run") == {"generation": 2}
    assert seen == [{"generation": 1, "backend": "dry-run"}, {"generation": 2}]
    assert store.current.generation == 2


def test_image_listeners_get_generation_and_trigger() -> None:
    store = StateStore()
    got: list[tuple[int, str]] = []
    store.on_image_updated(lambda g, t: got.append((g, t)))
    store.image_updated(7, "udev:memory")
    assert got == [(7, "udev:memory")]


def test_to_json_is_plain_data() -> None:
    s = DaemonState(
        state=ImageState.LOADED,
        present_cpus=(0, 1),
        memory_ranges=((0x1000, 0x9FFFF),),
    )
    out = s.to_json()
    assert out["state"] == "loaded"
    assert out["present_cpus"] == [0, 1]
    assert out["memory_ranges"] == [[0x1000, 0x9FFFF]]


def test_format_cpulist_round_trips_through_the_kernel_parser() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from kdumpd.core.topology import format_cpulist
    from kdumpd.system.sysroot import parse_cpulist

    assert format_cpulist([8, 0, 1, 2, 3]) == "0-3,8"
    assert format_cpulist([]) == ""

    @given(st.sets(st.integers(0, 300)))
    def round_trip(cpus: set[int]) -> None:
        text = format_cpulist(cpus)
        assert (parse_cpulist(text + "\n", "cpulist") if cpus else ()) == tuple(sorted(cpus))

    round_trip()


def test_state_changes_name_every_state_field() -> None:
    """The typed update (StateChanges) and the snapshot (DaemonState) list the same fields."""
    import dataclasses

    from kdumpd.daemon.state import DaemonState, StateChanges

    assert set(StateChanges.__annotations__) == {f.name for f in dataclasses.fields(DaemonState)}
