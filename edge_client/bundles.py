"""Downloading model versions: every byte checked against the manifest before it is used.

:meth:`BundleStore.fetch` reads a version's ``manifest.json`` (its own sha256 checked
against the server's ``X-Fedge-Sha256`` header), then each file it lists, refusing any
whose size or sha256 differs from the manifest's entry; files this device already holds
with the right sha256 (round versions change only the weights) are copied locally instead
of downloaded. The version is assembled in a hidden directory, checked once more with
:func:`fedge.bundle.verify_bundle`, and renamed into place; a rejected download leaves
nothing behind (nor does one aborted by a stop signal), so the model in use keeps serving.
A rejection is a :class:`~edge_client.errors.ModelRejected` naming the version and the
manifest's sha256, for the daemon to remember.

With a ``verify`` callable (the daemon passes :class:`edge_client.trust.ManifestTrust`) the
manifest's signature (``X-Fedge-Signature``) is checked before any file it lists is
fetched; a signature that does not verify rejects the version, and an accepted one is kept
beside the manifest as ``manifest.sig`` so the stored copy verifies offline too.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from edge_client.api import CoordinatorApi
from edge_client.errors import ModelRejected
from fedge.bundle import MANIFEST_NAME, BundleManifest, sha256_file, verify_bundle
from fedge.errors import BundleError
from fedge.fileio import publish_directory
from fedge.signing import SIGNATURE_HEADER, write_signature_file

ManifestCheck = Callable[[bytes, str | None], str | None]
"""``(manifest bytes, signature header) -> key id`` (None: not verified); raises
:class:`~fedge.errors.SignatureError` to refuse."""

__all__ = ["BundleStore", "ManifestCheck"]

logger = logging.getLogger(__name__)

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:-]{0,127}")


def _check_version(version: str) -> str:
    if not _VERSION.fullmatch(version):
        raise BundleError(f"unsafe model version name {version!r}")
    return version


class BundleStore:
    """Verified bundles under ``root/<version>/``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, version: str) -> Path:
        return self.root / _check_version(version)

    def has(self, version: str) -> bool:
        return (self.path(version) / MANIFEST_NAME).is_file()

    def versions(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / MANIFEST_NAME).is_file())

    def fetch(
        self, client: CoordinatorApi, version: str, *, verify: ManifestCheck | None = None
    ) -> Path:
        """Download and verify ``version`` unless present; returns its directory."""
        final = self.path(version)
        if self.has(version):
            return final
        staging = self.root / f".{version}.{uuid.uuid4().hex[:8]}.partial"
        staging.mkdir()
        seen: dict[str, str] = {}
        try:
            manifest = self._download(client, version, staging, seen, verify)
            verify_bundle(staging)
            publish_directory(staging, final)
        except BundleError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ModelRejected(
                str(exc), version=version, manifest_sha256=seen.get("manifest"), file=exc.file
            ) from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("model %s downloaded and verified (%d files)", version, len(manifest.files))
        return final

    def _download(
        self,
        client: CoordinatorApi,
        version: str,
        staging: Path,
        seen: dict[str, str],
        verify: ManifestCheck | None,
    ) -> BundleManifest:
        response = client.download(version, MANIFEST_NAME)
        claimed = response.headers.get("x-fedge-sha256")
        digest = hashlib.sha256(response.body).hexdigest()
        seen["manifest"] = digest
        if claimed is not None and claimed != digest:
            raise BundleError(
                f"model {version}: {MANIFEST_NAME} has sha256 {digest}, the server says {claimed}",
                file=MANIFEST_NAME,
            )
        signature = response.headers.get(SIGNATURE_HEADER.lower())
        if verify is not None and verify(response.body, signature) is not None:
            write_signature_file(staging, str(signature))
        manifest = BundleManifest.from_json(response.body)
        if manifest.model_version != version:
            raise BundleError(
                f"asked for model {version}, the manifest is for {manifest.model_version}"
            )
        for name, entry in sorted(manifest.files.items()):
            target = staging / name
            local = self._local_copy(entry.sha256, name)
            if local is not None:
                shutil.copyfile(local, target)
                continue
            body = client.download(version, name).body
            if len(body) != entry.size:
                raise BundleError(
                    f"model {version}: {name} arrived with {len(body)} bytes, the manifest "
                    f"says {entry.size}; rejected",
                    file=name,
                )
            got = hashlib.sha256(body).hexdigest()
            if got != entry.sha256:
                raise BundleError(
                    f"model {version}: {name} has sha256 {got}, the manifest says "
                    f"{entry.sha256}; rejected",
                    file=name,
                )
            target.write_bytes(body)
        (staging / MANIFEST_NAME).write_bytes(response.body)
        return manifest

    def _local_copy(self, sha256: str, name: str) -> Path | None:
        for version in self.versions():
            candidate = self.root / version / name
            if candidate.is_file() and sha256_file(candidate) == sha256:
                return candidate
        return None

    def prune(self, keep: set[str]) -> None:
        """Remove every stored version not in ``keep`` (and leftover partial downloads)."""
        for path in self.root.iterdir():
            if path.name in keep or not path.is_dir():
                continue
            if path.name.startswith(".") or (path / MANIFEST_NAME).is_file():
                shutil.rmtree(path, ignore_errors=True)
                logger.debug("pruned %s", path.name)
