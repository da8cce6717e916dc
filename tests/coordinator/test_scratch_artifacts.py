"""ScratchArtifactStore: a simulation's artifacts in memory up to a budget, on disk past it
or where a caller needs a path, the same bytes through every read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from coordinator.artifacts import ArtifactStore, ScratchArtifactStore
from coordinator.errors import NotFoundError


def _files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "sha256").rglob("*") if p.is_file())


def test_blobs_within_the_budget_stay_in_memory_until_a_path_is_asked(tmp_path: Path) -> None:
    store = ScratchArtifactStore(tmp_path, memory_bytes=10)
    digest = store.put_bytes(b"12345")
    assert digest == hashlib.sha256(b"12345").hexdigest()
    assert _files(tmp_path) == []
    assert store.exists(digest)
    assert store.get_bytes(digest) == b"12345"
    assert store.size(digest) == 5
    with store.open(digest) as handle:
        assert handle.read() == b"12345"
    path = store.path(digest)
    assert path.read_bytes() == b"12345"
    assert ArtifactStore(tmp_path).get_bytes(digest) == b"12345"  # the same layout on disk


def test_past_the_budget_blobs_go_to_the_directory(tmp_path: Path) -> None:
    store = ScratchArtifactStore(tmp_path, memory_bytes=10)
    first, second = store.put_bytes(b"123456"), store.put_bytes(b"abcdefgh")
    assert store.put_bytes(b"123456") == first  # again: no second copy
    assert [p.name for p in _files(tmp_path)] == [second]
    assert store.get_bytes(first) == b"123456"
    assert store.get_bytes(second) == b"abcdefgh"


def test_unknown_and_malformed_digests_are_not_found(tmp_path: Path) -> None:
    store = ScratchArtifactStore(tmp_path)
    with pytest.raises(NotFoundError):
        store.get_bytes("0" * 64)
    with pytest.raises(NotFoundError):
        store.path("../etc")
    assert not store.exists("0" * 64)
