"""The one JSON codec of the SecAgg+ messages, for the transports.

Each message becomes a JSON-able document with a ``type`` tag; keys and ciphertexts are
base64; a :class:`~fedge.secagg.protocol.MaskedInput`'s vector travels as a separate
binary body (like a model update's delta in :mod:`fedge.messages`). Decoding validates the
shape of every field and raises :class:`~fedge.errors.ProtocolError` naming it; whether the
content makes sense (ids in the graph, bundles that authenticate) is the step functions'
check. ``decode_secagg(*encode_secagg(m)) == m`` for every message.

:func:`server_state_to_dict` / :func:`server_state_from_dict` keep a
:class:`~fedge.secagg.protocol.ServerState` between requests; it holds no secret.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeAlias

import numpy as np

from fedge.errors import ProtocolError, SecAggError
from fedge.secagg.masking import MaskingConfig
from fedge.secagg.protocol import (
    AdvertiseKeys,
    KeyRoster,
    MaskedInput,
    ServerState,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedge.validation import check_int

__all__ = [
    "SECAGG_MESSAGE_TYPES",
    "SecAggMessage",
    "decode_secagg",
    "encode_secagg",
    "server_state_from_dict",
    "server_state_to_dict",
]

SecAggMessage: TypeAlias = (
    AdvertiseKeys | KeyRoster | ShareKeys | ShareDelivery | MaskedInput | UnmaskRequest
) | UnmaskResponse

SECAGG_MESSAGE_TYPES: Mapping[str, type[SecAggMessage]] = MappingProxyType(
    {
        "secagg_advertise_keys": AdvertiseKeys,
        "secagg_key_roster": KeyRoster,
        "secagg_share_keys": ShareKeys,
        "secagg_share_delivery": ShareDelivery,
        "secagg_masked_input": MaskedInput,
        "secagg_unmask_request": UnmaskRequest,
        "secagg_unmask_response": UnmaskResponse,
    }
)
_TAGS = {cls: tag for tag, cls in SECAGG_MESSAGE_TYPES.items()}


def encode_secagg(message: SecAggMessage) -> tuple[dict[str, Any], bytes | None]:
    """The JSON-able document of ``message`` and its binary body (a masked input's vector)."""
    tag = _TAGS.get(type(message))
    if tag is None:
        raise ProtocolError(f"not a secure-aggregation message: {type(message).__name__}")
    doc: dict[str, Any] = {"type": tag, "client_id": message.client_id}
    body: bytes | None = None
    if isinstance(message, AdvertiseKeys):
        doc["encryption_key"] = _b64(message.encryption_key)
        doc["mask_key"] = _b64(message.mask_key)
    elif isinstance(message, KeyRoster):
        doc["threshold"] = message.threshold
        doc["neighbours"] = [encode_secagg(n)[0] for n in message.neighbours]
    elif isinstance(message, ShareKeys | ShareDelivery):
        doc["bundles"] = _blobs(message.bundles)
    elif isinstance(message, MaskedInput):
        body = message.data
    elif isinstance(message, UnmaskRequest):
        doc["survivors"] = sorted(message.survivors)
        doc["dropped"] = sorted(message.dropped)
    else:
        doc["seed_shares"] = _blobs(message.seed_shares)
        doc["key_shares"] = _blobs(message.key_shares)
    return doc, body


def decode_secagg(doc: Mapping[str, Any], body: bytes | None = None) -> SecAggMessage:
    """The message a document (and, for a masked input, its body) describes."""
    if not isinstance(doc, Mapping):
        raise ProtocolError(f"a message must be a JSON object, got {type(doc).__name__}")
    tag = doc.get("type")
    if not isinstance(tag, str) or tag not in SECAGG_MESSAGE_TYPES:
        raise ProtocolError(
            f"unknown message type {tag!r}; known: {sorted(SECAGG_MESSAGE_TYPES)}", field="type"
        )
    cls = SECAGG_MESSAGE_TYPES[tag]
    fields = {
        AdvertiseKeys: {"encryption_key", "mask_key"},
        KeyRoster: {"threshold", "neighbours"},
        ShareKeys: {"bundles"},
        ShareDelivery: {"bundles"},
        MaskedInput: set(),
        UnmaskRequest: {"survivors", "dropped"},
        UnmaskResponse: {"seed_shares", "key_shares"},
    }[cls] | {"type", "client_id"}
    if set(doc) != fields:
        raise ProtocolError(
            f"a {tag} has the fields {sorted(fields)}, got {sorted(doc)}", field=tag
        )
    if (body is not None) != (cls is MaskedInput):
        raise ProtocolError(f"a {tag} {'needs' if cls is MaskedInput else 'has no'} binary body")
    cid = _int(doc["client_id"], "client_id")
    if cls is AdvertiseKeys:
        return AdvertiseKeys(
            cid,
            _unb64(doc["encryption_key"], "encryption_key"),
            _unb64(doc["mask_key"], "mask_key"),
        )
    if cls is KeyRoster:
        neighbours = doc["neighbours"]
        if not isinstance(neighbours, list):
            raise ProtocolError("neighbours must be a list", field="neighbours")
        decoded = [decode_secagg(n) for n in neighbours]
        if not all(isinstance(n, AdvertiseKeys) for n in decoded):
            raise ProtocolError("neighbours must be advertised keys", field="neighbours")
        adverts = tuple(n for n in decoded if isinstance(n, AdvertiseKeys))
        return KeyRoster(cid, _int(doc["threshold"], "threshold"), adverts)
    if cls is ShareKeys:
        return ShareKeys(cid, _unblobs(doc["bundles"], "bundles"))
    if cls is ShareDelivery:
        return ShareDelivery(cid, _unblobs(doc["bundles"], "bundles"))
    if cls is MaskedInput:
        assert body is not None
        return MaskedInput(cid, bytes(body))
    if cls is UnmaskRequest:
        return UnmaskRequest(
            cid, _ids(doc["survivors"], "survivors"), _ids(doc["dropped"], "dropped")
        )
    return UnmaskResponse(
        cid,
        seed_shares=_unblobs(doc["seed_shares"], "seed_shares"),
        key_shares=_unblobs(doc["key_shares"], "key_shares"),
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a base64 string", field=what)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"{what} is not base64: {exc}", field=what) from exc


def _blobs(blobs: Mapping[int, bytes]) -> dict[str, str]:
    return {str(peer): _b64(blob) for peer, blob in sorted(blobs.items())}


def _unblobs(value: object, what: str) -> dict[int, bytes]:
    if not isinstance(value, Mapping):
        raise ProtocolError(f"{what} must be an object of client id -> base64", field=what)
    out: dict[int, bytes] = {}
    for key, blob in value.items():
        if not isinstance(key, str) or not key.isdigit():
            raise ProtocolError(f"{what} keys must be client ids, got {key!r}", field=what)
        out[int(key)] = _unb64(blob, what)
    return out


def _int(value: object, what: str) -> int:
    return check_int(value, what, low=0, error=lambda message: ProtocolError(message, field=what))


def _ids(value: object, what: str) -> frozenset[int]:
    if not isinstance(value, list):
        raise ProtocolError(f"{what} must be a list of client ids", field=what)
    return frozenset(_int(v, what) for v in value)


def server_state_to_dict(state: ServerState) -> dict[str, Any]:
    """A JSON-able form of the server's state, to keep between requests (no secrets in it:
    public keys, the graph, who reached which stage and the masked sum)."""
    config = state.config
    return {
        "config": {
            "dimension": config.dimension,
            "clip": config.clip,
            "example_cap": config.example_cap,
            "modulus_bits": config.modulus_bits,
            "quantization_bits": config.quantization_bits,
        },
        "degree": state.degree,
        "threshold": state.threshold,
        "stage": state.stage,
        "keys": [encode_secagg(advert)[0] for _, advert in sorted(state.keys.items())],
        "graph": {str(cid): sorted(peers) for cid, peers in sorted(state.graph.items())},
        "shared": sorted(state.shared),
        "survivors": sorted(state.survivors),
        "masked_sum": None
        if state.masked_sum is None
        else _b64(state.masked_sum.astype("<u8").tobytes()),
    }


def server_state_from_dict(doc: Mapping[str, Any]) -> ServerState:
    """The inverse of :func:`server_state_to_dict`; SecAggError if ``doc`` is not one."""
    try:
        keys = [decode_secagg(advert) for advert in doc["keys"]]
        masked = doc["masked_sum"]
        state = ServerState(
            config=MaskingConfig(**doc["config"]),
            degree=doc["degree"],
            threshold=doc["threshold"],
            stage=doc["stage"],
            keys={k.client_id: k for k in keys if isinstance(k, AdvertiseKeys)},
            graph={int(cid): frozenset(peers) for cid, peers in doc["graph"].items()},
            shared=frozenset(doc["shared"]),
            survivors=frozenset(doc["survivors"]),
            masked_sum=None
            if masked is None
            else np.frombuffer(_unb64(masked, "masked_sum"), dtype="<u8").astype(np.uint64),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SecAggError(f"not a secure-aggregation server state: {exc!r}") from exc
    if len(state.keys) != len(keys) or state.stage not in _SERVER_STAGES:
        raise SecAggError("not a secure-aggregation server state: bad keys or stage")
    return state


_SERVER_STAGES = frozenset({"advertise", "share", "masked", "unmask"})
