"""Installing the dashboard on a Flask app: its configuration, its per-app state (the
sessions and the chart cache, in ``app.extensions``; no module-level state), the security
headers of every ``/ui`` response and the access rule of every route."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import cast

from flask import Response, current_app, g, request

from coordinator.limits import RateLimit
from coordinator.rest.ratelimit import RegistrationLimiter
from coordinator.ui.charts import ChartCache
from coordinator.ui.sessions import SessionStore, UiSession
from fedge.validation import check_positive

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "COOKIE",
    "LOGIN_COOKIE",
    "LOGIN_LIMIT",
    "UI_PREFIX",
    "UiConfig",
    "UiState",
    "current_session",
    "set_session",
    "ui_state",
]

UI_PREFIX = "/ui"
COOKIE = "fedge_session"
LOGIN_COOKIE = "fedge_login"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_EXTENSION = "fedge_ui"
LOGIN_LIMIT = RateLimit(
    per_address=0.1, per_address_burst=10, total=2.0, total_burst=100, max_addresses=10_000
)
"""Failed logins: 10 in a row from one address, then one every 10 s; 100 at once from all
addresses, then two a second."""


@dataclass(frozen=True)
class UiConfig:
    """``viewer_token_hash``: sha256 of the read-only token (None: no viewer logins; the
    admin token comes from :class:`~coordinator.rest.state.ApiConfig`). ``secure_cookie``
    marks the session cookie Secure (set it when serving HTTPS). Sessions expire after
    ``session_seconds``. ``login_limit`` bounds failed logins (unknown tokens) per source
    address and overall: past it a login is refused 429 until the bucket refills.
    The clients page marks a client "falling behind" when it has made no call for more
    than ``behind_seconds``."""

    viewer_token_hash: str | None = None
    secure_cookie: bool = False
    session_seconds: float = 8 * 3600.0
    login_limit: RateLimit = LOGIN_LIMIT
    behind_seconds: float = 600.0

    def __post_init__(self) -> None:
        check_positive(self.session_seconds, "session_seconds")
        check_positive(self.behind_seconds, "behind_seconds")


@dataclass
class UiState:
    """One app's dashboard state: its sessions, the failed-login limiter, the key that
    signs the login form's pre-session token, and the chart cache."""

    config: UiConfig
    sessions: SessionStore
    logins: RegistrationLimiter
    login_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    charts: ChartCache = field(default_factory=ChartCache)


def ui_state() -> UiState:
    return cast(UiState, current_app.extensions[_EXTENSION])


def current_session() -> UiSession | None:
    """The logged-in session of this request, or None."""
    return cast(UiSession | None, g.get("fedge_ui_session"))


def set_session(session: UiSession | None) -> None:
    g.fedge_ui_session = session


def security_headers(response: Response) -> Response:
    if request.path == UI_PREFIX or request.path.startswith(UI_PREFIX + "/"):
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if request.endpoint != "ui.static":
            response.headers["Cache-Control"] = "no-store"
    return response
