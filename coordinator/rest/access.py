"""The access rules of the REST API, one per blueprint, each run by that blueprint's
``before_request`` so no view can skip it.

Tokens arrive as ``Authorization: Bearer <token>``. An unknown or malformed token is a
401; a known token of the wrong kind is a 403.
"""

from __future__ import annotations

from typing import cast

from flask import g, request

from coordinator.auth import bearer_token, token_matches
from coordinator.errors import AuthenticationError, PermissionDeniedError, RateLimitedError
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


def _token() -> str:
    return bearer_token(request.headers.get("Authorization"))


def _is_admin(token: str) -> bool:
    expected = current_state().config.admin_token_hash
    return expected is not None and token_matches(token, expected)


def require_admin() -> None:
    """The admin token; without one configured, admin endpoints are disabled (403)."""
    token = _token()
    if _is_admin(token):
        return
    state = current_state()
    if state.config.admin_token_hash is None:
        raise PermissionDeniedError(
            "admin endpoints are disabled: the coordinator was started without an admin token",
            code="admin_disabled",
        )
    state.service.authenticate(token)  # an unknown token is a 401, a client's a 403
    raise PermissionDeniedError("this endpoint needs the admin token", code="admin_required")


def require_client() -> None:
    """A registered client's token; the client is then :func:`current_client`."""
    token = _token()
    if _is_admin(token):
        raise PermissionDeniedError(
            "this endpoint needs a client token, not the admin token",
            code="client_token_required",
        )
    setattr(g, _CLIENT, current_state().service.authenticate(token))


def require_reader() -> None:
    """Downloads: any client (then :func:`reader_client`), or the admin."""
    token = _token()
    if not _is_admin(token):
        setattr(g, _CLIENT, current_state().service.authenticate(token))


def require_enrollment() -> None:
    """Registration: rate-limited per source address and overall (429 with Retry-After),
    then open unless an enrollment token is configured (the admin's works too, and so does
    a managed enrollment token that has not expired nor been revoked: whether it is used
    up is decided when the client is created, so a registration retry still answers)."""
    state = current_state()
    if state.registrations is not None:
        wait = state.registrations.acquire(request.remote_addr or "unknown")
        if wait > 0:
            seconds = state.registrations.retry_after(wait)
            raise RateLimitedError(
                f"too many registrations; retry in {seconds} s", retry_after=seconds
            )
    expected = state.config.enrollment_token_hash
    if expected is None:
        return
    token = _token()
    if token_matches(token, expected) or _is_admin(token):
        return
    if state.service.check_enrollment_token(token, uses=False) is None:
        raise AuthenticationError("unknown enrollment token", code="invalid_token")


def managed_enrollment_token() -> str | None:
    """The managed enrollment token this registration presents (its use is counted when
    the client is created), or None: no token, the static one, the admin's, or (open
    enrollment) a token that is no managed one."""
    state = current_state()
    header = request.headers.get("Authorization")
    if not header:
        return None
    try:
        token = bearer_token(header)
    except AuthenticationError:
        return None  # only open enrollment gets here (require_enrollment checked it)
    expected = state.config.enrollment_token_hash
    if (expected is not None and token_matches(token, expected)) or _is_admin(token):
        return None
    if state.service.check_enrollment_token(token, uses=False) is None:
        return None
    return token


def reader_client() -> ClientRecord | None:
    """The client :func:`require_reader` authenticated, or None for the admin."""
    return cast(ClientRecord | None, getattr(g, _CLIENT, None))


def current_client() -> ClientRecord:
    """The client :func:`require_client` authenticated for this request."""
    return cast(ClientRecord, getattr(g, _CLIENT))
