"""The app factory: one Flask app per call over a service, with the blueprints, the error
handlers, each route's body limit (:mod:`coordinator.rest.gate`) and an access log whose
client-sent parts are escaped (:func:`coordinator.logsafe.printable`)."""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, request

from coordinator.logsafe import printable
from coordinator.rest.admin import admin
from coordinator.rest.devices import devices, downloads, enrollment
from coordinator.rest.errors import register_error_handlers
from coordinator.rest.gate import check_body_limit
from coordinator.rest.public import monitoring, public
from coordinator.rest.state import ApiConfig, install_state
from coordinator.service import CoordinatorService
from coordinator.serving.api import install_serving
from coordinator.serving.predict import ServingConfig
from coordinator.ui import UiConfig, install_ui

__all__ = ["BLUEPRINTS", "create_app"]

logger = logging.getLogger(__name__)

BLUEPRINTS: tuple[Blueprint, ...] = (public, monitoring, enrollment, devices, downloads, admin)
"""Every route of the API lives in one of these; each has one access rule."""


def _access_log(response: Response) -> Response:
    logger.info(
        "%s %s -> %d", printable(request.method), printable(request.path), response.status_code
    )
    return response


def create_app(
    service: CoordinatorService,
    config: ApiConfig,
    *,
    serving: ServingConfig | None = None,
    ui: UiConfig | None = None,
) -> Flask:
    """The Flask app serving ``service``; no module-level state, one app per call.
    ``serving`` configures the predict route (default: the dynamic mode); ``ui`` adds the
    operator's dashboard under ``/ui/`` (:mod:`coordinator.ui`; HTML, not in the OpenAPI
    document)."""
    app = Flask("coordinator", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = config.max_content_length or service.config.max_update_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # Only the documented methods (and HEAD beside GET) are answered; OPTIONS is a 405.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    install_state(app, service, config)
    install_serving(app, service, serving or ServingConfig())
    register_error_handlers(app)
    app.before_request(check_body_limit)
    app.after_request(_access_log)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    if ui is not None:
        install_ui(app, ui)
    return app
