"""Installing the dashboard on a Flask app (apart from :mod:`coordinator.ui.app`, which the
views import, so that the two do not import each other)."""

from __future__ import annotations

from flask import Flask

from coordinator.rest.ratelimit import RegistrationLimiter
from coordinator.ui.app import _EXTENSION, UiConfig, UiState, security_headers
from coordinator.ui.sessions import SessionStore
from coordinator.ui.views import ui

__all__ = ["install_ui"]


def install_ui(app: Flask, config: UiConfig) -> None:
    """Serve the dashboard under ``/ui/`` on ``app`` (built by ``create_app``)."""
    app.extensions[_EXTENSION] = UiState(
        config,
        SessionStore(lifetime_seconds=config.session_seconds),
        RegistrationLimiter(config.login_limit),
    )
    app.after_request(security_headers)
    app.register_blueprint(ui)
