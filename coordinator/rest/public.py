"""Routes open to anyone: liveness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from coordinator.metrics import CONTENT_TYPE, render_metrics
from coordinator.openapi import build_openapi
from coordinator.rest.state import current_state

__all__ = ["public"]

public = Blueprint("public", __name__)


@public.get("/healthz")
def healthz() -> Any:
    models = current_state().service.store.list_models(stage="production")
    return {"status": "ok", "model_version": models[-1].version if models else None}


@public.get("/metrics")
def metrics() -> Response:
    return Response(render_metrics(current_state().service.store), content_type=CONTENT_TYPE)


@public.get("/v1/openapi.json")
def openapi() -> Any:
    return build_openapi()
