"""Key agreement and authenticated encryption for secure aggregation.

Each client holds two X25519 key pairs (Bonawitz et al., CCS 2017; Bell et al., CCS 2020):
one encrypts the share bundles it sends to its neighbours through the server, the other
derives the pairwise mask seeds. A Diffie-Hellman result goes through HKDF-SHA256 (with a
purpose label, so one agreement never serves two uses) to a 32-byte key; bundles are
sealed with ChaCha20-Poly1305, the sender and receiver ids bound in as associated data so
that the server can neither read a bundle nor hand it to someone else.

``cryptography`` is imported inside the functions, so ``import fedge`` stays numpy-only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fedge.errors import SecAggError

__all__ = [
    "KEY_BYTES",
    "KeyPair",
    "agree",
    "generate_key_pair",
    "open_sealed",
    "public_key_of",
    "seal",
]

KEY_BYTES = 32
_NONCE_BYTES = 12


@dataclass(frozen=True, repr=False)
class KeyPair:
    """An X25519 key pair as raw bytes (32 each). The repr never shows the private key."""

    private: bytes
    public: bytes

    def __post_init__(self) -> None:
        if len(self.private) != KEY_BYTES or len(self.public) != KEY_BYTES:
            raise SecAggError(f"X25519 keys are {KEY_BYTES} bytes")

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.hex()})"


def generate_key_pair() -> KeyPair:
    """A fresh X25519 key pair from the operating system's generator."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    private = X25519PrivateKey.generate().private_bytes_raw()
    return KeyPair(private=private, public=public_key_of(private))


def public_key_of(private: bytes) -> bytes:
    """The X25519 public key of a raw 32-byte private key."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    if len(private) != KEY_BYTES:
        raise SecAggError(f"an X25519 private key is {KEY_BYTES} bytes, got {len(private)}")
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def agree(private: bytes, peer_public: bytes, *, purpose: bytes) -> bytes:
    """The 32-byte key both ends derive: HKDF-SHA256(X25519(private, peer_public), purpose).

    Symmetric: ``agree(a.private, b.public) == agree(b.private, a.public)``.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    if len(private) != KEY_BYTES or len(peer_public) != KEY_BYTES:
        raise SecAggError(f"X25519 keys are {KEY_BYTES} bytes")
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError as exc:  # an all-zero result: a low-order public key
        raise SecAggError(f"key agreement failed: {exc}") from exc
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=purpose)
    return hkdf.derive(shared)


def seal(key: bytes, plaintext: bytes, *, associated_data: bytes) -> bytes:
    """ChaCha20-Poly1305 encryption: a random 12-byte nonce followed by the ciphertext."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    nonce = os.urandom(_NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, *, associated_data: bytes) -> bytes:
    """The plaintext of :func:`seal`'s output; SecAggError if anything was altered."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    if len(sealed) < _NONCE_BYTES + 16:
        raise SecAggError(
            f"a sealed bundle is at least {_NONCE_BYTES + 16} bytes, got {len(sealed)}"
        )
    try:
        return ChaCha20Poly1305(key).decrypt(
            sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], associated_data
        )
    except InvalidTag as exc:
        raise SecAggError(
            "a sealed bundle failed authentication (tampered or misaddressed)"
        ) from exc
