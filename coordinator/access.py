"""The access rules of the device and admin APIs, whatever the transport: functions of the
API state (:class:`~coordinator.rest.state.RestState`), the ``Authorization`` value the
call carried (``Bearer <token>``; a REST header or gRPC metadata) and, for registration,
the caller's address.

An unknown or malformed token is a 401 (:class:`~coordinator.errors.AuthenticationError`);
a known token of the wrong kind is a 403 (:class:`~coordinator.errors.PermissionDeniedError`).
The REST blueprints (:mod:`coordinator.rest.access`) and the gRPC servicers
(:mod:`coordinator.rpc`) call these, over the same state, so both share one rate limiter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coordinator.auth import bearer_token, token_matches
from coordinator.errors import AuthenticationError, PermissionDeniedError, RateLimitedError
from coordinator.records import ClientRecord

if TYPE_CHECKING:
    from coordinator.rest.state import RestState

__all__ = [
    "check_enrollment_token",
    "is_admin",
    "managed_enrollment_token",
    "require_admin",
    "require_client",
    "require_enrollment",
    "require_reader",
]


def is_admin(state: RestState, token: str) -> bool:
    """Whether ``token`` is the admin token (never, when none is configured)."""
    expected = state.config.admin_token_hash
    return expected is not None and token_matches(token, expected)


def require_admin(state: RestState, authorization: str | None) -> None:
    """The admin token; without one configured, admin calls are disabled (403)."""
    token = bearer_token(authorization)
    if is_admin(state, token):
        return
    if state.config.admin_token_hash is None:
        raise PermissionDeniedError(
            "admin endpoints are disabled: the coordinator was started without an admin token",
            code="admin_disabled",
        )
    state.service.authenticate(token)  # an unknown token is a 401, a client's a 403
    raise PermissionDeniedError("this endpoint needs the admin token", code="admin_required")


def require_client(
    state: RestState, authorization: str | None, transport: str = "rest"
) -> ClientRecord:
    """The registered client whose token this is (never the admin); the call is noted as
    the client's last seen over ``transport`` (:meth:`CoordinatorService.client_seen`)."""
    token = bearer_token(authorization)
    if is_admin(state, token):
        raise PermissionDeniedError(
            "this endpoint needs a client token, not the admin token",
            code="client_token_required",
        )
    client = state.service.authenticate(token)
    state.service.client_seen(client, transport)
    return client


def require_reader(
    state: RestState, authorization: str | None, transport: str = "rest"
) -> ClientRecord | None:
    """Downloads: any client (returned, and noted as seen like :func:`require_client`),
    or the admin (None)."""
    token = bearer_token(authorization)
    if is_admin(state, token):
        return None
    client = state.service.authenticate(token)
    state.service.client_seen(client, transport)
    return client


def require_enrollment(state: RestState, authorization: str | None, remote_addr: str) -> None:
    """Registration: rate-limited per source address and overall (429 with a retry-after),
    then open unless an enrollment token is configured (the admin's works too, and so does
    a managed enrollment token that has not expired nor been revoked: whether it is used
    up is decided when the client is created, so a registration retry still answers)."""
    if state.registrations is not None:
        wait = state.registrations.acquire(remote_addr or "unknown")
        if wait > 0:
            seconds = state.registrations.retry_after(wait)
            raise RateLimitedError(
                f"too many registrations; retry in {seconds} s", retry_after=seconds
            )
    check_enrollment_token(state, authorization)


def check_enrollment_token(state: RestState, authorization: str | None) -> None:
    """The token rule of registration alone (no rate limit): none when enrollment is open,
    else the enrollment token, the admin's, or a managed token that has not expired nor
    been revoked."""
    expected = state.config.enrollment_token_hash
    if expected is None:
        return
    token = bearer_token(authorization)
    if token_matches(token, expected) or is_admin(state, token):
        return
    if state.service.check_enrollment_token(token, uses=False) is None:
        raise AuthenticationError("unknown enrollment token", code="invalid_token")


def managed_enrollment_token(state: RestState, authorization: str | None) -> str | None:
    """The managed enrollment token this registration presents (its use is counted when
    the client is created), or None: no token, the static one, the admin's, or (open
    enrollment) a token that is no managed one."""
    if not authorization:
        return None
    try:
        token = bearer_token(authorization)
    except AuthenticationError:
        return None  # only open enrollment gets here (require_enrollment checked it)
    expected = state.config.enrollment_token_hash
    if (expected is not None and token_matches(token, expected)) or is_admin(state, token):
        return None
    if state.service.check_enrollment_token(token, uses=False) is None:
        return None
    return token
