"""The access rules of the REST API, one per blueprint, each run by that blueprint's
``before_request`` so no view can skip it.

Tokens arrive as ``Authorization: Bearer <token>``. The rules themselves are
transport-neutral (:mod:`coordinator.access`); these wrappers feed them the request's
header and address and keep the client they authenticated for the view.
"""

from __future__ import annotations

from typing import cast

from flask import g, request

from coordinator import access
from coordinator.records import ClientRecord
from coordinator.rest.state import current_state

__all__ = [
    "current_client",
    "managed_enrollment_token",
    "reader_client",
    "require_admin",
    "require_client",
    "require_enrollment",
    "require_reader",
]

_CLIENT = "fedge_client"


def _authorization() -> str | None:
    return request.headers.get("Authorization")


def require_admin() -> None:
    """The admin token; without one configured, admin endpoints are disabled (403)."""
    access.require_admin(current_state(), _authorization())


def require_client() -> None:
    """A registered client's token; the client is then :func:`current_client`."""
    setattr(g, _CLIENT, access.require_client(current_state(), _authorization()))


def require_reader() -> None:
    """Downloads: any client (then :func:`reader_client`), or the admin."""
    client = access.require_reader(current_state(), _authorization())
    if client is not None:
        setattr(g, _CLIENT, client)


def require_enrollment() -> None:
    """Registration: :func:`coordinator.access.require_enrollment` for this request's
    source address (rate limits) and token."""
    access.require_enrollment(current_state(), _authorization(), request.remote_addr or "unknown")


def managed_enrollment_token() -> str | None:
    """The managed enrollment token this registration presents, or None
    (:func:`coordinator.access.managed_enrollment_token`)."""
    return access.managed_enrollment_token(current_state(), _authorization())


def reader_client() -> ClientRecord | None:
    """The client :func:`require_reader` authenticated, or None for the admin."""
    return cast(ClientRecord | None, getattr(g, _CLIENT, None))


def current_client() -> ClientRecord:
    """The client :func:`require_client` authenticated for this request."""
    return cast(ClientRecord, getattr(g, _CLIENT))
