"""The one build-aside helper behind every atomic write: a failed build leaves no partial behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from featstore.layout import IngestSettings
from featstore.newstore import build_empty_store
from featstore.storage import locate


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_partial(tmp_path: Path) -> None:
    target = tmp_path / "lock.json"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        locate(target).write_atomic("not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lock.json"]


def test_a_store_whose_build_fails_leaves_nothing_beside_it(tmp_path: Path) -> None:
    store = locate(tmp_path / "s.zarr")
    with pytest.raises(RuntimeError), store.built_aside() as partial:
        build_empty_store(partial, IngestSettings(), "test")
        assert Path(partial.url, "zarr.json").exists()
        raise RuntimeError("the disk filled up")
    assert list(tmp_path.iterdir()) == []


def test_create_exclusive_wins_once_and_leaves_no_partial(tmp_path: Path) -> None:
    target = locate(tmp_path / "lock.json")
    assert target.create_exclusive(b"first")
    assert not target.create_exclusive(b"second")
    assert Path(target.url).read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lock.json"]
