from __future__ import annotations

from pathlib import Path

from kdumpd.daemon.statefile import Recorded, StateFile, key_digest
from tests.unit.daemon_fakes import TopologyHolder


def test_roundtrip_atomic(tmp_path: Path) -> None:
    sf = StateFile(tmp_path / "state")
    assert sf.load() is None
    rec = Recorded(7, "dry-run", True, "abc", "boot", loads=3)
    sf.save(rec)
    got = sf.load()
    assert got is not None
    assert (got.generation, got.backend, got.loaded, got.topology_digest, got.loads) == (
        7,
        "dry-run",
        True,
        "abc",
        3,
    )
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["state.json"]


def test_garbage_is_ignored(tmp_path: Path) -> None:
    sf = StateFile(tmp_path)
    sf.path.write_text("{not json")
    assert sf.load() is None
    sf.path.write_text('{"version": 99}')
    assert sf.load() is None


def test_digest_tracks_image_key() -> None:
    from kdumpd.system.topologyreader import read_topology
    from tests.unit.daemon_fakes import FIXTURE

    h = TopologyHolder()
    a = key_digest(h.current.image_key())
    # stable across two independent reads of the same sysroot (new objects, same key)
    again = read_topology(FIXTURE)
    assert again is not h.current and key_digest(again.image_key()) == a
    assert len(a) == 64 and int(a, 16) >= 0
    h.add_blocks()
    b = key_digest(h.current.image_key())
    assert b != a
    h.set_blocks(0)  # back to the same topology: the same digest
    assert key_digest(h.current.image_key()) == a


def test_unloaded_on_request_roundtrip_and_old_files(tmp_path: Path) -> None:
    import json

    sf = StateFile(tmp_path)
    sf.save(Recorded(3, "file", False, "", "boot", unloaded_on_request=True))
    got = sf.load()
    assert got is not None and got.unloaded_on_request and not got.loaded
    raw = json.loads(sf.path.read_text())
    del raw["unloaded_on_request"]  # a state.json from before the field existed
    sf.path.write_text(json.dumps(raw))
    got = sf.load()
    assert got is not None and not got.unloaded_on_request
