"""Routes open to anyone (``public``: health, the OpenAPI document and the manifest
signing keys), and Prometheus metrics (``monitoring``: the admin token, since they
describe the fleet)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app

from coordinator.metrics import CONTENT_TYPE, render_metrics
from coordinator.openapi import build_openapi
from coordinator.rest.access import require_admin
from coordinator.rest.state import current_state
from coordinator.serving.api import serving_stats

__all__ = ["monitoring", "public"]

logger = logging.getLogger(__name__)

public = Blueprint("public", __name__)

monitoring = Blueprint("monitoring", __name__)
monitoring.before_request(require_admin)


@public.get("/healthz")
def healthz() -> Any:
    """200 when the store answers a query and the artifact directory reads, writes and has
    room; else 503 naming each check that failed (``checks``: ``ok`` or what is wrong)."""
    state = current_state()
    service = state.service
    checks: dict[str, str] = {}
    version = None
    try:
        models = service.store.list_models(stage="production")
        version = models[-1].version if models else None
        checks["store"] = "ok"
    except Exception as exc:  # any failure of the store is what this route reports
        logger.warning("health check: the store failed: %s", exc)
        checks["store"] = f"the store failed a query: {type(exc).__name__}"
    problem = service.artifacts.health(min_free_bytes=state.config.min_free_bytes)
    checks["artifacts"] = problem or "ok"
    if problem:
        logger.warning("health check: artifacts: %s", problem)
    healthy = all(value == "ok" for value in checks.values())
    document = {
        "status": "ok" if healthy else "failing",
        "model_version": version,
        "checks": checks,
    }
    return document, 200 if healthy else 503


@public.get("/v1/keys")
def signing_keys() -> Any:
    """The manifest signing key and its rotation statements (public keys only)."""
    return current_state().service.signer.document()


@monitoring.get("/metrics")
def metrics() -> Response:
    text = render_metrics(current_state().service.store)
    stats = serving_stats(current_app)
    if stats is not None:
        text += "\n".join(stats.render()) + "\n"
    return Response(text, content_type=CONTENT_TYPE)


@public.get("/v1/openapi.json")
def openapi() -> Any:
    return build_openapi()
