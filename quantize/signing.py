"""Signing an edge bundle offline: ``fedge-quantize sign --key FILE BUNDLE_DIR``.

The bundle is verified first (every file against the manifest), then the exact bytes of
its ``manifest.json`` are signed with the Ed25519 private key in FILE (PEM, PKCS#8) and
the signature written beside it as ``manifest.sig`` (:mod:`fedge.signing`). A coordinator
started with ``--trusted-bundle-key`` imports the bundle only when that file verifies.
"""

from __future__ import annotations

from pathlib import Path

from fedge.bundle import MANIFEST_NAME, verify_bundle
from fedge.signing import SigningKey, write_signature_file

__all__ = ["sign_bundle"]


def sign_bundle(directory: str | Path, key_file: str | Path) -> str:
    """Write ``directory/manifest.sig``; returns the signing key's id."""
    root = Path(directory)
    verify_bundle(root)
    key = SigningKey.load(key_file)
    write_signature_file(root, key.sign((root / MANIFEST_NAME).read_bytes()))
    return key.key_id
