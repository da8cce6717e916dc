"""The operator's routes (the ``admin`` blueprint): clients, tasks, rounds, models, reports
and alerts. Its ``before_request`` demands the admin token for every one of them."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from coordinator.errors import CoordinatorError
from coordinator.rest.access import require_admin
from coordinator.rest.bodies import float_arg, json_body, refuse_unknown
from coordinator.rest.state import current_state
from coordinator.views import (
    alert_document,
    client_document,
    enrollment_token_document,
    model_document,
    report_listing_document,
    round_document,
    task_record_document,
)
from fedge.messages import TaskConfig
from fedge.validation import check_number

__all__ = ["admin"]

admin = Blueprint("admin", __name__)
admin.before_request(require_admin)


@admin.get("/v1/clients")
def list_clients() -> Any:
    clients = current_state().service.store.list_clients()
    return {"clients": [client_document(c) for c in clients]}


@admin.post("/v1/clients/<client_id>/revoke")
def revoke_client(client_id: str) -> Any:
    return client_document(current_state().service.revoke_client(client_id))


@admin.post("/v1/enrollment-tokens")
def create_enrollment_token() -> Any:
    body = json_body(optional=True)
    refuse_unknown(body, {"label", "expires_in", "max_uses"})
    issued = current_state().service.create_enrollment_token(
        label=body.get("label"), expires_in=body.get("expires_in"), max_uses=body.get("max_uses")
    )
    return {**enrollment_token_document(issued.record), "token": issued.token}, 201


@admin.get("/v1/enrollment-tokens")
def list_enrollment_tokens() -> Any:
    records = current_state().service.list_enrollment_tokens()
    return {"enrollment_tokens": [enrollment_token_document(r) for r in records]}


@admin.post("/v1/enrollment-tokens/<token_id>/revoke")
def revoke_enrollment_token(token_id: str) -> Any:
    return enrollment_token_document(current_state().service.revoke_enrollment_token(token_id))


@admin.post("/v1/tasks")
def create_tasks() -> Any:
    body = json_body()
    refuse_unknown(body, {"kind", "client_ids", "deadline_seconds", "config"})
    client_ids = body.get("client_ids")
    if client_ids is not None and not (
        isinstance(client_ids, list) and all(isinstance(c, str) for c in client_ids)
    ):
        raise CoordinatorError("client_ids must be a list of ids", code="invalid_request")
    deadline = check_number(
        body.get("deadline_seconds", 3600.0),
        "deadline_seconds",
        error=lambda message: CoordinatorError(message, code="invalid_request"),
    )
    tasks = current_state().service.create_tasks(
        str(body.get("kind")),
        client_ids=client_ids,
        deadline_seconds=deadline,
        config=TaskConfig.from_dict(body["config"]) if "config" in body else None,
    )
    return {"tasks": [task_record_document(t) for t in tasks]}, 201


@admin.post("/v1/rounds")
def open_round() -> Any:
    overrides = json_body(optional=True)
    return round_document(current_state().service.open_round(overrides)), 201


@admin.get("/v1/rounds")
def list_rounds() -> Any:
    service = current_state().service
    return {
        "rounds": [
            round_document(r, service.round_updates(r.round_id), detail=False)
            for r in service.list_rounds()
        ]
    }


@admin.get("/v1/rounds/<int:round_id>")
def show_round(round_id: int) -> Any:
    service = current_state().service
    return round_document(service.get_round(round_id), service.round_updates(round_id))


@admin.post("/v1/rounds/<int:round_id>/cancel")
def cancel_round(round_id: int) -> Any:
    service = current_state().service
    return round_document(service.cancel_round(round_id), service.round_updates(round_id))


@admin.get("/v1/models")
def list_models() -> Any:
    return {"models": [model_document(m) for m in current_state().service.list_models()]}


@admin.get("/v1/models/<version>")
def show_model(version: str) -> Any:
    service = current_state().service
    model = service.get_model(version)
    return model_document(model, service.model_events(model.version))


@admin.post("/v1/models/<version>/promote")
def promote(version: str) -> Any:
    service = current_state().service
    model = service.promote(version)
    return model_document(model, service.model_events(model.version))


@admin.post("/v1/models/rollback")
def rollback() -> Any:
    service = current_state().service
    model = service.rollback()
    return model_document(model, service.model_events(model.version))


@admin.get("/v1/alerts")
def list_alerts() -> Any:
    store = current_state().service.store
    alerts = store.list_alerts(kind=request.args.get("kind"), since=float_arg("since"))
    return {"alerts": [alert_document(a) for a in alerts]}


@admin.get("/v1/reports")
def list_reports() -> Any:
    reports = current_state().service.list_reports(
        request.args.get("kind"),
        task_id=request.args.get("task_id"),
        model_version=request.args.get("model_version"),
    )
    return {"reports": [report_listing_document(r) for r in reports]}
