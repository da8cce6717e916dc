"""Which manifests this device believes: the coordinator's pinned Ed25519 key.

``fedge-edge register`` pins the coordinator's manifest signing key (the registration
answer's ``signing_key``, also served by ``GET /v1/keys``) in the state's ``trust.json``.
A state without one (enrolled before manifests were signed) pins the key ``/v1/keys``
names on first contact and logs that it did: trust on first use, as safe as that first
contact. From then on every manifest must carry a signature (``X-Fedge-Signature``) that
verifies against the pinned key or a key reachable from it through rotation statements,
each signed by the key before (:func:`fedge.signing.trusted_keys`); an unknown key id
makes the device fetch the coordinator's statements once, keeping only those that
verify. Anything else is a :class:`~fedge.errors.SignatureError`, which the bundle store
turns into a rejected model, whatever the transport.

A coordinator that publishes no key (``/v1/keys`` answers 404) cannot be pinned: until
one is, manifests are checked against their sha256 only and each download logs a warning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from edge_client.api import CoordinatorApi
from edge_client.errors import RequestRejected
from edge_client.state import ClientState
from fedge.errors import FedgeError, ProtocolError, SignatureError
from fedge.signing import (
    RotationStatement,
    key_id,
    public_key_from_text,
    trusted_keys,
    verify_manifest,
)

__all__ = ["ManifestTrust", "pin_at_enrollment", "pin_coordinator_key"]

logger = logging.getLogger(__name__)


def _current_key(document: dict[str, Any]) -> tuple[str, str]:
    current = document.get("current")
    if not isinstance(current, dict) or not isinstance(current.get("public_key"), str):
        raise ProtocolError("unexpected /v1/keys answer: no current public key")
    public = public_key_from_text(current["public_key"])
    return key_id(public), current["public_key"]


def pin_coordinator_key(
    state: ClientState, client: CoordinatorApi, *, how: str, clock: Any = time.time
) -> str | None:
    """Pin the coordinator's current signing key in ``state``; its key id, or None when the
    coordinator publishes no key (404)."""
    try:
        document = client.signing_keys()
    except RequestRejected as exc:
        if exc.status == 404:
            return None
        raise
    ident, public = _current_key(document)
    state.save_trust({"key_id": ident, "public_key": public, "pinned_at": clock(), "how": how})
    return ident


def _verifies(statement: RotationStatement, trusted: dict[str, Any]) -> bool:
    previous = trusted.get(statement.previous_key_id)
    if previous is None:
        return False
    try:
        statement.verify(previous)
    except SignatureError:
        return False
    return True


def pin_at_enrollment(state: ClientState, signing_key: Mapping[str, Any] | None) -> str | None:
    """Pin the key a registration answer carries (``fedge-edge register``); its key id, or
    None (logged) when the answer has none or a malformed one: the key is then pinned on
    first contact."""
    try:
        if signing_key is None:
            raise ProtocolError("the registration answer carries no signing key")
        ident, public = _current_key({"current": dict(signing_key)})
    except FedgeError as exc:
        logger.warning("nothing pinned at enrollment (%s): pinned on first contact", exc)
        return None
    state.save_trust(
        {"key_id": ident, "public_key": public, "pinned_at": time.time(), "how": "enrollment"}
    )
    logger.info("pinned the coordinator's signing key %s", ident)
    return ident


class ManifestTrust:
    """Checks manifest signatures against the key pinned in ``state`` (see the module)."""

    def __init__(self, state: ClientState, client: CoordinatorApi) -> None:
        self.state = state
        self.client = client

    def __call__(self, manifest: bytes, signature: str | None) -> str | None:
        """The id of the key that signed ``manifest``; None when no key could be pinned."""
        trust = self.state.trust()
        if not trust.get("public_key"):
            ident = pin_coordinator_key(self.state, self.client, how="first contact")
            if ident is None:
                logger.warning(
                    "the coordinator publishes no signing key: this manifest is checked "
                    "against its sha256 only"
                )
                return None
            logger.warning(
                "no signing key was pinned at enrollment: pinned key %s on first contact "
                "(trust on first use)",
                ident,
            )
            trust = self.state.trust()
        pinned = public_key_from_text(str(trust["public_key"]))
        accepted = [RotationStatement.from_dict(item) for item in trust.get("rotations", [])]
        trusted = trusted_keys(pinned, accepted)
        claimed = (signature or "").partition(":")[0]
        if signature is not None and claimed not in trusted:
            offered = self.client.signing_keys().get("rotations")
            statements = [
                RotationStatement.from_dict(item)
                for item in (offered if isinstance(offered, list) else [])
                if isinstance(item, dict)
            ]
            trusted = trusted_keys(pinned, accepted + statements)
            kept = [s for s in statements if s not in accepted and _verifies(s, trusted)]
            if kept:
                for statement in kept:
                    logger.info(
                        "signing key %s rotated to %s (statement verified)",
                        statement.previous_key_id,
                        statement.key_id,
                    )
                rotations = [s.to_dict() for s in accepted + kept]
                self.state.save_trust({**trust, "rotations": rotations})
        return verify_manifest(manifest, signature, trusted)
