"""Signed manifests: Ed25519 keys, detached signatures and key rotation statements.

A signing key's id is the first 16 hex characters of the sha256 of its raw 32-byte public
key. A signature travels as ``<key id>:<base64 signature>`` (the ``X-Fedge-Signature``
header) or as a bundle's ``manifest.sig`` file, ``{"key_id": ..., "signature": ...}``; it
covers the exact bytes of ``manifest.json``.

A rotation statement moves trust from one key to the next: ``{"key_id", "public_key",
"previous_key_id", "signature"}``, where the signature is the previous key's over
``ROTATION_CONTEXT + new raw public key``. :func:`trusted_keys` starts from a pinned
public key and follows every statement whose signature verifies against a key already
trusted; a forged statement adds nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedge.errors import ConfigError, SignatureError
from fedge.fileio import atomic_write_bytes, atomic_write_text

__all__ = [
    "ROTATION_CONTEXT",
    "SIGNATURE_FILE",
    "SIGNATURE_HEADER",
    "RotationStatement",
    "SigningKey",
    "key_id",
    "load_public_key",
    "parse_signature",
    "public_key_from_text",
    "public_key_text",
    "read_signature_file",
    "trusted_keys",
    "verify_manifest",
    "write_signature_file",
]

SIGNATURE_HEADER = "X-Fedge-Signature"
SIGNATURE_FILE = "manifest.sig"
ROTATION_CONTEXT = b"fedge-key-rotation-v1\x00"
_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(_RAW, _RAW_PUBLIC)


def key_id(public: Ed25519PublicKey) -> str:
    """The first 16 hex characters of sha256 of the raw public key."""
    return hashlib.sha256(_raw(public)).hexdigest()[:16]


def public_key_text(public: Ed25519PublicKey) -> str:
    """The raw public key in base64 (how ``/v1/keys`` and device state carry it)."""
    return base64.b64encode(_raw(public)).decode("ascii")


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """A public key from :func:`public_key_text`'s form; SignatureError when malformed."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise SignatureError(f"malformed Ed25519 public key {text[:60]!r}") from exc


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """A public key from a PEM file, or the public half of a PEM private key file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc}") from exc
    try:
        loaded: Any = serialization.load_pem_public_key(data)
    except ValueError:
        loaded = SigningKey.load(path).public_key
    if not isinstance(loaded, Ed25519PublicKey):
        raise ConfigError(f"{path} does not hold an Ed25519 key")
    return loaded


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key and its id."""

    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | Path) -> SigningKey:
        """The PEM (PKCS#8, unencrypted) private key in ``path``; ConfigError otherwise."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the signing key {path}: {exc}") from exc
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def save(self, path: str | Path) -> None:
        """Write the key as PEM, atomically, readable by its owner only (0600)."""
        data = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write_bytes(path, data, mode=0o600)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def sign(self, data: bytes) -> str:
        """``<key id>:<base64 signature>`` over ``data``."""
        signature = base64.b64encode(self.private_key.sign(data)).decode("ascii")
        return f"{self.key_id}:{signature}"

    def endorse(self, new: Ed25519PublicKey) -> RotationStatement:
        """The statement, signed by this key, that ``new`` takes over from it."""
        signature = self.private_key.sign(ROTATION_CONTEXT + _raw(new))
        return RotationStatement(
            key_id=key_id(new),
            public_key=public_key_text(new),
            previous_key_id=self.key_id,
            signature=base64.b64encode(signature).decode("ascii"),
        )


@dataclass(frozen=True)
class RotationStatement:
    """``public_key`` (id ``key_id``) takes over from ``previous_key_id``, signed by it."""

    key_id: str
    public_key: str
    previous_key_id: str
    signature: str

    def to_dict(self) -> dict[str, str]:
        return {
            "key_id": self.key_id,
            "public_key": self.public_key,
            "previous_key_id": self.previous_key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RotationStatement:
        try:
            fields = {
                name: data[name]
                for name in ("key_id", "public_key", "previous_key_id", "signature")
            }
        except (KeyError, TypeError) as exc:
            raise SignatureError(f"malformed rotation statement: missing {exc}") from exc
        if not all(isinstance(value, str) for value in fields.values()):
            raise SignatureError("malformed rotation statement: every field is a string")
        return cls(**fields)

    def verify(self, previous: Ed25519PublicKey) -> Ed25519PublicKey:
        """The new public key when ``previous`` signed this statement; SignatureError if not."""
        new = public_key_from_text(self.public_key)
        if key_id(new) != self.key_id or key_id(previous) != self.previous_key_id:
            raise SignatureError(f"rotation statement to key {self.key_id}: key ids do not match")
        try:
            signature = base64.b64decode(self.signature.encode("ascii"), validate=True)
            previous.verify(signature, ROTATION_CONTEXT + _raw(new))
        except (binascii.Error, ValueError, UnicodeEncodeError, InvalidSignature) as exc:
            raise SignatureError(
                f"rotation statement to key {self.key_id} is not signed by key "
                f"{self.previous_key_id}; refused"
            ) from exc
        return new


def trusted_keys(
    pinned: Ed25519PublicKey, statements: Iterable[RotationStatement]
) -> dict[str, Ed25519PublicKey]:
    """The pinned key and every key reachable from it through verifying statements."""
    trusted = {key_id(pinned): pinned}
    pending = list(statements)
    progress = True
    while progress:
        progress = False
        for statement in list(pending):
            previous = trusted.get(statement.previous_key_id)
            if previous is None:
                continue
            pending.remove(statement)
            try:
                trusted.setdefault(statement.key_id, statement.verify(previous))
            except SignatureError:
                continue
            progress = True
    return trusted


def parse_signature(value: str) -> tuple[str, bytes]:
    """``(key id, signature bytes)`` from ``<key id>:<base64>``; SignatureError if malformed."""
    ident, sep, encoded = value.strip().partition(":")
    try:
        signature = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise SignatureError("malformed manifest signature: not base64") from exc
    if not sep or not ident or len(signature) != 64:
        raise SignatureError("malformed manifest signature: expected <key id>:<base64>")
    return ident, signature


def verify_manifest(
    manifest: bytes, signature: str | None, trusted: Mapping[str, Ed25519PublicKey]
) -> str:
    """The id of the trusted key whose signature over ``manifest`` verifies.

    SignatureError when the signature is missing, malformed, names an untrusted key or
    does not verify.
    """
    if signature is None:
        raise SignatureError("the manifest is not signed; refused", file="manifest.json")
    ident, raw = parse_signature(signature)
    public = trusted.get(ident)
    if public is None:
        raise SignatureError(
            f"the manifest is signed by key {ident}, which this device does not trust; refused",
            file="manifest.json",
        )
    try:
        public.verify(raw, manifest)
    except InvalidSignature as exc:
        raise SignatureError(
            f"the manifest's signature does not verify against key {ident}; refused",
            file="manifest.json",
        ) from exc
    return ident


def write_signature_file(directory: str | Path, signature: str) -> None:
    """Write ``manifest.sig`` (``{"key_id", "signature"}``) into a bundle directory."""
    ident, raw = parse_signature(signature)
    document = {"key_id": ident, "signature": base64.b64encode(raw).decode("ascii")}
    atomic_write_text(Path(directory) / SIGNATURE_FILE, json.dumps(document, sort_keys=True) + "\n")


def read_signature_file(directory: str | Path) -> str | None:
    """The ``<key id>:<base64>`` form of a bundle's ``manifest.sig``; None when absent."""
    path = Path(directory) / SIGNATURE_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return f"{document['key_id']}:{document['signature']}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"malformed {SIGNATURE_FILE}: {exc}", file=SIGNATURE_FILE) from exc
