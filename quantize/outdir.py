"""All-or-nothing output directories: write into a hidden sibling, rename at the end.

A failed or interrupted run leaves nothing behind: the staging directory is removed, and so
are any parent directories this run created. An output directory that already exists is
never deleted: it must be an empty directory (which the finished output then replaces), otherwise
the run is refused before any work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fedge.errors import ConfigError
from fedge.fileio import publish_directory

__all__ = ["check_out_dir", "staged_out_dir"]


def check_out_dir(out: str | os.PathLike[str]) -> Path:
    """``out`` as an absolute path if it is absent or an empty directory; else ConfigError."""
    target = Path(os.path.abspath(os.fspath(out)))
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise ConfigError(f"output directory {os.fspath(out)!r} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()):
        raise ConfigError(
            f"output directory {os.fspath(out)!r} exists and is not empty; give a new directory "
            "(existing output is never overwritten)"
        )
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot create the output directory {os.fspath(out)!r}: {ancestor} is not writable"
        )
    return target


@contextlib.contextmanager
def staged_out_dir(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging directory beside ``out``; on a clean exit rename it to ``out``.

    On any exception (KeyboardInterrupt included) the staging directory and the parents this
    call created are removed and the exception propagates.
    """
    target = check_out_dir(out)
    created = _make_parents(target.parent)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as exc:
        _remove_empty(created)
        raise ConfigError(f"cannot create a directory beside {target}: {exc}") from exc
    try:
        yield staging
        _set_default_mode(staging)
        # rename(2) replaces an empty directory and fails on a non-empty one, so output
        # that appeared at ``out`` meanwhile is kept, and this run fails instead.
        try:
            publish_directory(staging, target)
        except OSError as exc:
            raise ConfigError(f"cannot move the output into {target}: {exc.strerror}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        raise


def _make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and missing ancestors; return the ones created, outermost first."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    created = []
    try:
        for path in reversed(missing):
            path.mkdir()
            created.append(path)
    except OSError as exc:
        _remove_empty(created)
        raise ConfigError(f"cannot create {directory}: {exc.strerror}") from exc
    return created


def _remove_empty(created: list[Path]) -> None:
    for path in reversed(created):
        with contextlib.suppress(OSError):
            path.rmdir()


def _set_default_mode(path: Path) -> None:
    # mkdtemp makes the directory 0700; the output should get the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)
