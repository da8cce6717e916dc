"""The coordinator's manifest signing keys: the current Ed25519 key and its rotations.

A key ring is a directory (mode 0700) holding ``signing-key.pem`` (the current private
key, 0600), ``rotations.json`` (every rotation statement, oldest first) and
``retired/<key id>.pem`` (earlier keys). :meth:`Keyring.open` creates the first key when
the directory has none; :meth:`Keyring.rotate` makes a new key and the statement, signed
by the previous key, that the new one takes over (devices that pinned an older key follow
the statements to it). A running server re-reads the ring when ``signing-key.pem``
changes, so a rotation takes effect on its next signature.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedge.cli import add_json_flag, add_verbosity_flags, print_json
from fedge.errors import ConfigError, UsageError
from fedge.fileio import atomic_write_text
from fedge.signing import RotationStatement, SigningKey, load_public_key, public_key_text

__all__ = [
    "KEY_FILE",
    "ROTATIONS_FILE",
    "Keyring",
    "StaticSigner",
    "add_keys_parser",
    "add_signing_arguments",
    "keys_cli",
    "signer_from_args",
    "trusted_bundle_key",
]

logger = logging.getLogger(__name__)

KEY_FILE = "signing-key.pem"
ROTATIONS_FILE = "rotations.json"


@dataclass(frozen=True)
class _Snapshot:
    key: SigningKey
    rotations: tuple[RotationStatement, ...]
    mtime: int


class StaticSigner:
    """One key, never rotated (``--signing-key FILE``, or an in-memory key for tests and
    in-process services)."""

    def __init__(self, key: SigningKey | None = None) -> None:
        self._key = key if key is not None else SigningKey.generate()

    @property
    def key(self) -> SigningKey:
        return self._key

    @property
    def rotations(self) -> tuple[RotationStatement, ...]:
        return ()

    def sign(self, data: bytes) -> str:
        return self.key.sign(data)

    def document(self) -> dict[str, Any]:
        """``GET /v1/keys``: the current key and the rotation statements."""
        return {
            "current": {
                "key_id": self.key.key_id,
                "public_key": public_key_text(self.key.public_key),
                "algorithm": "ed25519",
            },
            "rotations": [statement.to_dict() for statement in self.rotations],
        }


class Keyring(StaticSigner):
    """A key ring directory (see the module docstring)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._snapshot = self._load()

    @classmethod
    def open(cls, directory: str | Path) -> Keyring:
        """The ring in ``directory``, with a first key created (0600, atomic) if it has none."""
        root = Path(directory)
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the key directory {root}: {exc}") from exc
        path = root / KEY_FILE
        if not path.exists():
            key = SigningKey.generate()
            key.save(path)
            logger.info("created the manifest signing key %s in %s", key.key_id, path)
        return cls(root)

    def _load(self) -> _Snapshot:
        path = self.directory / KEY_FILE
        try:
            mtime = path.stat().st_mtime_ns
        except OSError as exc:
            raise ConfigError(f"no signing key at {path}: {exc}") from exc
        key = SigningKey.load(path)
        rotations: list[RotationStatement] = []
        log = self.directory / ROTATIONS_FILE
        if log.is_file():
            try:
                document = json.loads(log.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read {log}: {exc}") from exc
            rotations = [RotationStatement.from_dict(item) for item in document]
        return _Snapshot(key, tuple(rotations), mtime)

    def _current(self) -> _Snapshot:
        with self._lock:
            try:
                mtime = (self.directory / KEY_FILE).stat().st_mtime_ns
            except OSError:
                return self._snapshot
            if mtime != self._snapshot.mtime:
                self._snapshot = self._load()
            return self._snapshot

    @property
    def key(self) -> SigningKey:
        return self._current().key

    @property
    def rotations(self) -> tuple[RotationStatement, ...]:
        return self._current().rotations

    def rotate(self) -> RotationStatement:
        """A new current key, endorsed by the previous one; the previous is kept retired."""
        with self._lock:
            previous = self._snapshot.key
            new = SigningKey.generate()
            statement = previous.endorse(new.public_key)
            retired = self.directory / "retired"
            retired.mkdir(mode=0o700, exist_ok=True)
            previous.save(retired / f"{previous.key_id}.pem")
            log = [item.to_dict() for item in self._snapshot.rotations] + [statement.to_dict()]
            atomic_write_text(
                self.directory / ROTATIONS_FILE, json.dumps(log, indent=2) + "\n", mode=0o600
            )
            new.save(self.directory / KEY_FILE)
            os.utime(self.directory / KEY_FILE)
            self._snapshot = self._load()
        logger.info("rotated the signing key %s -> %s", previous.key_id, new.key_id)
        return statement


# Command line ---------------------------------------------------------------------------


def add_signing_arguments(serve: argparse.ArgumentParser) -> None:
    """``serve``'s signing options."""
    group = serve.add_argument_group("manifest signing (Ed25519)")
    source = group.add_mutually_exclusive_group()
    source.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        help="key ring directory (default ARTIFACTS/keys; the first key is created there)",
    )
    source.add_argument(
        "--signing-key",
        type=Path,
        metavar="FILE",
        help="sign with this PEM Ed25519 private key instead of a key ring (not rotatable)",
    )
    group.add_argument(
        "--trusted-bundle-key",
        type=Path,
        metavar="FILE",
        help="import --bundle only if its manifest.sig verifies against this public key",
    )


def signer_from_args(args: argparse.Namespace) -> StaticSigner:
    """The signer ``serve``'s options name: ``--signing-key``, else the key ring."""
    if args.signing_key is not None:  # argparse refuses it together with a key ring
        return StaticSigner(SigningKey.load(args.signing_key))
    return Keyring.open(args.keys if args.keys is not None else args.artifacts / "keys")


def trusted_bundle_key(args: argparse.Namespace) -> Ed25519PublicKey | None:
    """``--trusted-bundle-key``'s public key, or None."""
    if args.trusted_bundle_key is None:
        return None
    return load_public_key(args.trusted_bundle_key)


def add_keys_parser(sub: Any, epilog: str | None = None) -> None:
    """``fedge-coordinator keys show|rotate --keys DIR``."""
    keys = sub.add_parser(
        "keys",
        help="show or rotate the manifest signing key",
        description="Show or rotate the manifest signing key of a key ring. A running "
        "coordinator signs with the new key from its next signature on.",
        epilog=epilog,
    )
    verbs = keys.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, text in (
        ("show", "print the current key id and public key"),
        ("rotate", "create a new key, endorsed by the current one"),
    ):
        verb = verbs.add_parser(name, help=text, description=text)
        verb.add_argument("--keys", required=True, type=Path, metavar="DIR", help="key ring")
        add_json_flag(verb)
        add_verbosity_flags(verb)
    keys.set_defaults(handler=keys_cli)


def keys_cli(args: argparse.Namespace) -> int:
    """``keys show`` / ``keys rotate``."""
    if args.verb == "show":
        if not (args.keys / KEY_FILE).is_file():
            raise UsageError(f"no key ring at {args.keys} (no {KEY_FILE})")
        document = Keyring(args.keys).document()
    else:
        ring = Keyring.open(args.keys)
        statement = ring.rotate()
        document = {**ring.document(), "rotated_from": statement.previous_key_id}
    if args.json:
        print_json(document)
    else:
        current = document["current"]
        print(f"key_id      {current['key_id']}")
        print(f"public_key  {current['public_key']}")
        if "rotated_from" in document:
            print(f"rotated     {document['rotated_from']} -> {current['key_id']}")
    return 0
