"""Durable file writes: the one atomic-write implementation every fedge package uses.

A write goes to a temporary file in the target's directory, is flushed and fsynced, renamed
over the target (atomic on POSIX), and then the directory is fsynced so that the rename
itself survives a crash. After a crash the target holds either the old or the new content,
never a torn mix; a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "fsync_directory"]


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames and creations in it are durable."""
    fd = os.open(os.fspath(directory), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, mode: int | None = None
) -> None:
    """Replace ``path`` with ``data`` atomically and durably (file and directory fsynced).

    ``mode`` sets the file's permission bits before it becomes visible (e.g. ``0o600`` for
    a token), so there is no moment when the content is readable with looser bits.
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_directory(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, mode: int | None = None) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)
