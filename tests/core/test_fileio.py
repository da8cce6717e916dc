"""The one atomic write: content replaced whole, permissions set before it is visible."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedge.fileio import atomic_write_bytes, atomic_write_text


def test_atomic_write_replaces_the_content_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    atomic_write_text(target, '{"new": true}')
    assert target.read_text() == '{"new": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_atomic_write_sets_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "token"
    atomic_write_bytes(target, b"secret", mode=0o600)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert target.read_bytes() == b"secret"


def test_a_failed_write_keeps_the_old_content_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_writing_into_a_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "missing" / "x.txt", "x")
