"""Durable file writes: the one atomic write and the one directory publish every fedge
package uses.

A write goes to a temporary file in the target's directory, is flushed and fsynced, renamed
over the target (atomic on POSIX), and then the directory is fsynced so that the rename
itself survives a crash. After a crash the target holds either the old or the new content,
never a torn mix; a failed write leaves no temporary file behind.

A directory of several files (a bundle, an export, a cache entry) is built in a staging
directory beside its final place and published with :func:`publish_directory`: its files
and the staging directory are fsynced, it is renamed into place, and the parent is fsynced.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "fsync_directory", "publish_directory"]


def _fsync_path(path: str | os.PathLike[str]) -> None:
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames and creations in it are durable."""
    _fsync_path(directory)


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, mode: int | None = None
) -> None:
    """Replace ``path`` with ``data`` atomically and durably (file and directory fsynced).

    ``mode`` sets the file's permission bits before it becomes visible (e.g. ``0o600`` for
    a token), so there is no moment when the content is readable with looser bits; without
    it the file gets the usual bits of a new file (0o666 less the umask).
    """
    target = Path(path)
    tmp_name = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    # Created owner-only when a mode is asked for (then set exactly); else the umask applies.
    initial = 0o600 if mode is not None else 0o666
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, initial)
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


def publish_directory(staging: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Rename the finished directory ``staging`` to ``final``, durably.

    Every file under ``staging`` and every directory in it are fsynced first, so the
    published tree never holds a file whose content is still in flight; then the rename,
    then the parent directory's fsync. ``final`` must be absent or an empty directory (the
    only targets rename(2) replaces): anything else raises OSError and leaves ``staging``
    in place for the caller to remove, so output that appeared at ``final`` meanwhile is
    never overwritten.
    """
    source, target = Path(staging), Path(final)
    for directory, _, files in os.walk(source):
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                _fsync_path(path)
        fsync_directory(directory)
    os.replace(source, target)
    fsync_directory(target.parent)
