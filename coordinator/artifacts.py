"""A content-addressed artifact directory: bytes are stored under their sha256.

Layout: ``ROOT/sha256/ab/abcdef...`` (two-level fan-out). A write goes to a temporary file
in ``ROOT/tmp``, is fsynced, renamed into place and the directory fsynced, so a returned
digest names bytes that are on disk. Writing the same bytes twice is a no-op, which makes
every writer idempotent and crash recovery a replay. Object storage (an fsspec URL) is the
scale-out path behind the same four methods.

A write cut short (a crash, a full disk) leaves a ``ROOT/tmp/*.part`` file that nothing
names: :meth:`ArtifactStore.clean_temporary` removes them when the server starts, and
:meth:`ArtifactStore.health` says whether the directory can still be read and written.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import BinaryIO

from coordinator.errors import NotFoundError
from fedge.fileio import fsync_directory

__all__ = ["ArtifactStore", "ScratchArtifactStore"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


class ArtifactStore:
    """Immutable blobs by sha256 under ``root``.

    ``durable=False`` skips every fsync: for a scratch directory whose content need not
    survive a crash (a simulation's, removed when the run ends).
    """

    def __init__(self, root: str | Path, *, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """Where ``digest``'s bytes live (whether or not they exist)."""
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise NotFoundError(f"not a sha256 digest: {digest!r}", code="artifact_not_found")
        return self.root / "sha256" / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` durably; returns its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        if self.exists(digest):
            return digest
        tmp = self._tmp()
        with open(tmp, "wb") as handle:
            handle.write(data)
            if self.durable:
                handle.flush()
                os.fsync(handle.fileno())
        self._commit(tmp, digest)
        return digest

    def put_file(self, source: str | Path) -> str:
        """Copy a file in durably, hashing as it streams; returns its sha256."""
        digest = hashlib.sha256()
        tmp = self._tmp()
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
            if self.durable:
                dst.flush()
                os.fsync(dst.fileno())
        hexdigest = digest.hexdigest()
        if self.exists(hexdigest):
            tmp.unlink()
        else:
            self._commit(tmp, hexdigest)
        return hexdigest

    def get_bytes(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no artifact {digest}", code="artifact_not_found") from None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFoundError(f"no artifact {digest}", code="artifact_not_found") from None

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"no artifact {digest}", code="artifact_not_found") from None

    def clean_temporary(self, *, older_than_s: float = 0.0) -> int:
        """Remove the temporary files of writes that never finished; how many were removed.

        Call it when no writer is running (the server does at start), or, on a directory
        other processes write too (coordinator replicas), with ``older_than_s`` above the
        longest write: only files unchanged for that long are removed."""
        removed = 0
        cutoff = time.time() - older_than_s
        for part in (self.root / "tmp").glob("*.part"):
            try:
                if older_than_s > 0 and part.stat().st_mtime > cutoff:
                    continue
                part.unlink()
            except FileNotFoundError:
                continue
            removed += 1
        return removed

    def health(self, *, min_free_bytes: int = 0) -> str | None:
        """None when the directory exists, reads, takes a small write and has at least
        ``min_free_bytes`` free; else what is wrong, in a phrase."""
        for directory in (self.root / "sha256", self.root / "tmp"):
            if not directory.is_dir():
                return f"{directory} is missing"
            if not os.access(directory, os.R_OK | os.X_OK):
                return f"{directory} is not readable"
        probe = self.root / "tmp" / f"health-{secrets.token_hex(4)}.probe"
        try:
            with open(probe, "wb") as handle:
                handle.write(b"ok")
        except OSError as exc:
            return f"{self.root / 'tmp'} is not writable: {exc.strerror or exc}"
        finally:
            probe.unlink(missing_ok=True)
        try:
            free = shutil.disk_usage(self.root).free
        except OSError as exc:
            return f"cannot measure the free space of {self.root}: {exc.strerror or exc}"
        if free < min_free_bytes:
            return f"{free} bytes free under {self.root}, below the {min_free_bytes}-byte minimum"
        return None

    def _tmp(self) -> Path:
        return self.root / "tmp" / f"{secrets.token_hex(8)}.part"

    def _commit(self, tmp: Path, digest: str) -> None:
        target = self.path(digest)
        target.parent.mkdir(exist_ok=True)
        os.replace(tmp, target)
        if self.durable:
            fsync_directory(target.parent)
            fsync_directory(self.root / "sha256")


class ScratchArtifactStore(ArtifactStore):
    """An :class:`ArtifactStore` on a scratch directory (a simulation's, removed when the
    run ends) that keeps what :meth:`put_bytes` stores in memory, up to ``memory_bytes`` in
    all, and writes a blob under ``ROOT`` only when a caller asks for its :meth:`path`.

    Past the budget, blobs go to the directory as with ``durable=False``; nothing is
    fsynced. Reads (:meth:`get_bytes`, :meth:`open`, :meth:`size`, :meth:`exists`) answer
    the same bytes either way."""

    def __init__(self, root: str | Path, *, memory_bytes: int = 64 << 20) -> None:
        super().__init__(root, durable=False)
        self.memory_bytes = memory_bytes
        self._blobs: dict[str, bytes] = {}
        self._held = 0
        self._lock = threading.Lock()

    def path(self, digest: str) -> Path:
        target = super().path(digest)
        blob = self._blobs.get(digest)
        if blob is not None and not target.is_file():
            tmp = self._tmp()
            tmp.write_bytes(blob)
            target.parent.mkdir(exist_ok=True)
            os.replace(tmp, target)
        return target

    def exists(self, digest: str) -> bool:
        return digest in self._blobs or super().exists(digest)

    def put_bytes(self, data: bytes) -> str:
        blob = bytes(data)
        digest = hashlib.sha256(blob).hexdigest()
        with self._lock:
            if digest in self._blobs:
                return digest
            if self._held + len(blob) <= self.memory_bytes:
                super().path(digest)  # the same check of the digest as a write to disk
                self._blobs[digest] = blob
                self._held += len(blob)
                return digest
        return super().put_bytes(blob)

    def get_bytes(self, digest: str) -> bytes:
        blob = self._blobs.get(digest)
        return blob if blob is not None else super().get_bytes(digest)

    def open(self, digest: str) -> BinaryIO:
        blob = self._blobs.get(digest)
        return io.BytesIO(blob) if blob is not None else super().open(digest)

    def size(self, digest: str) -> int:
        blob = self._blobs.get(digest)
        return len(blob) if blob is not None else super().size(digest)
