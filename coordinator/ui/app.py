"""Installing the dashboard on a Flask app: its configuration, its per-app state (the
sessions and the chart cache, in ``app.extensions``; no module-level state), the security
headers of every ``/ui`` response and the access rule of every route."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from flask import Flask, Response, current_app, g, request

from coordinator.ui.charts import ChartCache
from coordinator.ui.sessions import SessionStore, UiSession
from fedge.validation import check_positive

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "COOKIE",
    "UI_PREFIX",
    "UiConfig",
    "UiState",
    "current_session",
    "install_ui",
    "set_session",
    "ui_state",
]

UI_PREFIX = "/ui"
COOKIE = "fedge_session"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_EXTENSION = "fedge_ui"


@dataclass(frozen=True)
class UiConfig:
    """``viewer_token_hash``: sha256 of the read-only token (None: no viewer logins; the
    admin token comes from :class:`~coordinator.rest.state.ApiConfig`). ``secure_cookie``
    marks the session cookie Secure (set it when serving HTTPS). Sessions expire after
    ``session_seconds``."""

    viewer_token_hash: str | None = None
    secure_cookie: bool = False
    session_seconds: float = 8 * 3600.0

    def __post_init__(self) -> None:
        check_positive(self.session_seconds, "session_seconds")


@dataclass
class UiState:
    config: UiConfig
    sessions: SessionStore
    charts: ChartCache = field(default_factory=ChartCache)


def ui_state() -> UiState:
    return cast(UiState, current_app.extensions[_EXTENSION])


def current_session() -> UiSession | None:
    """The logged-in session of this request, or None."""
    return cast(UiSession | None, g.get("fedge_ui_session"))


def set_session(session: UiSession | None) -> None:
    g.fedge_ui_session = session


def _security_headers(response: Response) -> Response:
    if request.path == UI_PREFIX or request.path.startswith(UI_PREFIX + "/"):
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if request.endpoint != "ui.static":
            response.headers["Cache-Control"] = "no-store"
    return response


def install_ui(app: Flask, config: UiConfig) -> None:
    """Serve the dashboard under ``/ui/`` on ``app`` (built by ``create_app``)."""
    from coordinator.ui.views import ui

    app.extensions[_EXTENSION] = UiState(
        config, SessionStore(lifetime_seconds=config.session_seconds)
    )
    app.after_request(_security_headers)
    app.register_blueprint(ui)
