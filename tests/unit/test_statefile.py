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
    h = TopologyHolder()
    a = key_digest(h.current.image_key())
    assert a == key_digest(h(Path("/")).image_key())
    h.add_blocks()
    assert key_digest(h.current.image_key()) != a
