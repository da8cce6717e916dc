"""Admin routes of the REST API: clients, tasks, rounds, models, reports, alerts (admin
token)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from flask import Flask, request

from coordinator.errors import CoordinatorError
from coordinator.views import (
    alert_document,
    client_document,
    model_document,
    report_listing_document,
    round_document,
    task_record_document,
)
from fedge.messages import TaskConfig

if TYPE_CHECKING:
    from coordinator.rest import RequestContext

__all__ = ["register_admin_routes"]


def _float_arg(name: str) -> float | None:
    text = request.args.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise CoordinatorError(f"query parameter {name} must be a number", code="invalid_query")
    return value


def register_admin_routes(app: Flask, ctx: RequestContext) -> None:
    service = ctx.service

    @app.route("/v1/clients", methods=["GET"])
    def list_clients() -> Any:
        ctx.admin()
        return {"clients": [client_document(c) for c in service.store.list_clients()]}

    @app.route("/v1/tasks", methods=["POST"])
    def create_tasks() -> Any:
        ctx.admin()
        body = ctx.json_body()
        unknown = sorted(set(body) - {"kind", "client_ids", "deadline_seconds", "config"})
        if unknown:
            raise CoordinatorError(f"unknown fields {unknown}", code="invalid_request")
        client_ids = body.get("client_ids")
        if client_ids is not None and not (
            isinstance(client_ids, list) and all(isinstance(c, str) for c in client_ids)
        ):
            raise CoordinatorError("client_ids must be a list of ids", code="invalid_request")
        deadline = body.get("deadline_seconds", 3600.0)
        if isinstance(deadline, bool) or not isinstance(deadline, int | float):
            raise CoordinatorError("deadline_seconds must be a number", code="invalid_request")
        tasks = service.create_tasks(
            str(body.get("kind")),
            client_ids=client_ids,
            deadline_seconds=float(deadline),
            config=TaskConfig.from_dict(body["config"]) if "config" in body else None,
        )
        return {"tasks": [task_record_document(t) for t in tasks]}, 201

    @app.route("/v1/rounds", methods=["POST"])
    def open_round() -> Any:
        ctx.admin()
        overrides = ctx.json_body(optional=True)
        return round_document(service.open_round(overrides)), 201

    @app.route("/v1/rounds", methods=["GET"])
    def list_rounds() -> Any:
        ctx.admin()
        return {
            "rounds": [
                round_document(r, service.round_updates(r.round_id), detail=False)
                for r in service.list_rounds()
            ]
        }

    @app.route("/v1/rounds/<int:round_id>", methods=["GET"])
    def show_round(round_id: int) -> Any:
        ctx.admin()
        return round_document(service.get_round(round_id), service.round_updates(round_id))

    @app.route("/v1/models", methods=["GET"])
    def list_models() -> Any:
        ctx.admin()
        return {"models": [model_document(m) for m in service.list_models()]}

    @app.route("/v1/models/<version>", methods=["GET"])
    def show_model(version: str) -> Any:
        ctx.admin()
        model = service.get_model(version)
        return model_document(model, service.model_events(model.version))

    @app.route("/v1/models/<version>/promote", methods=["POST"])
    def promote(version: str) -> Any:
        ctx.admin()
        model = service.promote(version)
        return model_document(model, service.model_events(model.version))

    @app.route("/v1/models/rollback", methods=["POST"])
    def rollback() -> Any:
        ctx.admin()
        model = service.rollback()
        return model_document(model, service.model_events(model.version))

    @app.route("/v1/alerts", methods=["GET"])
    def list_alerts() -> Any:
        ctx.admin()
        alerts = service.store.list_alerts(kind=request.args.get("kind"), since=_float_arg("since"))
        return {"alerts": [alert_document(a) for a in alerts]}

    @app.route("/v1/reports", methods=["GET"])
    def list_reports() -> Any:
        ctx.admin()
        reports = service.list_reports(
            request.args.get("kind"),
            task_id=request.args.get("task_id"),
            model_version=request.args.get("model_version"),
        )
        return {"reports": [report_listing_document(r) for r in reports]}
