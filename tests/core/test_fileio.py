"""The one atomic write: content replaced whole, permissions set before it is visible."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedge.fileio import atomic_write_bytes, atomic_write_text, publish_directory


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


def test_without_a_mode_the_file_gets_the_umask_bits(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "record.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "record.json").st_mode) == 0o640


def test_publish_directory_moves_the_whole_tree_into_place(tmp_path: Path) -> None:
    staging = tmp_path / ".bundle.partial"
    (staging / "sub").mkdir(parents=True)
    (staging / "manifest.json").write_text("{}")
    (staging / "sub" / "weights.bin").write_bytes(b"\x00\x01")
    publish_directory(staging, tmp_path / "bundle")
    assert not staging.exists()
    assert (tmp_path / "bundle" / "manifest.json").read_text() == "{}"
    assert (tmp_path / "bundle" / "sub" / "weights.bin").read_bytes() == b"\x00\x01"


def test_publish_directory_never_replaces_a_non_empty_directory(tmp_path: Path) -> None:
    staging, final = tmp_path / ".out.partial", tmp_path / "out"
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(OSError, match=r"(?i)not empty|exists"):
        publish_directory(staging, final)
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert (staging / "new.txt").read_text() == "new"  # left for the caller to remove
