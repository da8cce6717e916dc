"""What is decided about a request from its request line and headers alone, before any of
its body is read: the body limit of its route and whether its token may send a body there.

The HTTP server (:mod:`coordinator.server`) asks :func:`precheck` as soon as a request's
headers have arrived and its body has not, and answers a refusal at once without reading
(or spooling to disk) the body; the app's ``before_request`` applies the same limit to
requests that arrived whole. Limits: the update upload and a secure round's masked input
take ``max_update_bytes``; the device reports (stats, evaluations, features)
``ApiConfig.max_report_bytes``; the dashboard's forms (``/ui/``) 16 KiB; every other route
``ApiConfig.max_json_bytes``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from flask import Flask, request

from coordinator.access import check_enrollment_token, require_admin, require_client
from coordinator.errors import CoordinatorError, PayloadTooLargeError, describe
from coordinator.records import ClientRecord
from coordinator.rest.state import EXTENSION, RestState, current_state

__all__ = [
    "UI_BODY_LIMIT",
    "Refusal",
    "body_limit",
    "check_body_limit",
    "precheck",
    "refusal_for_size",
]

_UPLOAD = re.compile(r"/v1/rounds/[^/]+/updates")
_SECAGG = re.compile(r"/v1/rounds/[^/]+/secagg/(advertise|share|mask|unmask)")
_MASKED_INPUT = re.compile(r"/v1/rounds/[^/]+/secagg/mask")
_REPORTS = frozenset({"/v1/stats", "/v1/evaluations", "/v1/features"})
_DECLINE = re.compile(r"/v1/tasks/[^/]+/decline")
_REGISTRATION = "/v1/clients"
_TOKEN_ROTATION = "/v1/clients/me/token"  # noqa: S105 (a path)
_UI = "/ui/"
UI_BODY_LIMIT = 16 * 1024
"""The dashboard's forms (a token, a CSRF token) are small."""


@dataclass(frozen=True)
class Refusal:
    """An answer given instead of reading a request's body."""

    status: int
    code: str
    detail: str
    headers: dict[str, str] = field(default_factory=dict)


def body_limit(state: RestState, method: str, path: str) -> int:
    """The most bytes a body of ``method path`` may have."""
    if method == "POST" and (_UPLOAD.fullmatch(path) or _MASKED_INPUT.fullmatch(path)):
        return state.service.config.max_update_bytes
    if path in _REPORTS:
        return state.config.max_report_bytes
    if path.startswith(_UI):
        return min(UI_BODY_LIMIT, state.config.max_json_bytes)
    return state.config.max_json_bytes


def _too_large(limit: int, length: int | None) -> PayloadTooLargeError:
    sent = f" (Content-Length {length})" if length is not None else ""
    return PayloadTooLargeError(f"the body is over this route's {limit}-byte limit{sent}")


def check_body_limit() -> None:
    """``before_request`` of the app: the route's limit from Content-Length, and the same
    limit while a body without one (chunked) is read (an upload's is refused by its view,
    after its token, so that the rejection counts against the client)."""
    limit = body_limit(current_state(), request.method, request.path)
    request.max_content_length = limit
    if request.method == "POST" and _UPLOAD.fullmatch(request.path):
        return  # the upload view refuses it, and records the rejection against the client
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit, length)


def _authorize(
    state: RestState, method: str, path: str, authorization: str | None
) -> ClientRecord | None:
    """The token rule of a route that takes a body (every one is a POST), as its blueprint
    applies it (:mod:`coordinator.access`; registration's rate limit is left to the route);
    the client on the device routes. Other methods take no body: their size limit is
    checked, and their token by their blueprint as usual."""
    if method != "POST" or path.startswith(_UI):
        return None  # the dashboard's forms: its session and CSRF token, checked by its view
    if path == _REGISTRATION:
        check_enrollment_token(state, authorization)
        return None
    if (
        _UPLOAD.fullmatch(path)
        or _SECAGG.fullmatch(path)
        or _DECLINE.fullmatch(path)
        or path in _REPORTS
        or path == _TOKEN_ROTATION
    ):
        return require_client(state, authorization)
    require_admin(state, authorization)
    return None


def precheck(
    app: Flask, method: str, path: str, authorization: str | None, content_length: int | None
) -> tuple[Refusal | None, int]:
    """``(refusal, limit)`` for a request whose headers have arrived: a refusal when its
    token may not send a body to ``path`` or its Content-Length is over the route's limit
    (None when the body may be read), and the route's limit, which a chunked body must
    not exceed while it streams in."""
    state: RestState = app.extensions[EXTENSION]
    limit = body_limit(state, method, path)
    try:
        client = _authorize(state, method, path, authorization)
        if content_length is not None and content_length > limit:
            too_large = _too_large(limit, content_length)
            round_id = _UPLOAD.fullmatch(path) and path.split("/")[3]
            if client is not None and round_id and round_id.isdigit():
                state.service.reject_update(client, int(round_id), too_large)
            raise too_large
    except CoordinatorError as exc:
        status, code = describe(exc)
        return Refusal(status, code, str(exc)), limit
    return None, limit


def refusal_for_size(limit: int) -> Refusal:
    """The refusal of a body that grew past ``limit`` while it streamed in (chunked)."""
    exc = _too_large(limit, None)
    status, code = describe(exc)
    return Refusal(status, code, str(exc))
