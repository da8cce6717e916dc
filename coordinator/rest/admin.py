"""The operator's routes (the ``admin`` blueprint): clients, tasks, rounds, models,
quarantined updates, reports and alerts. Its ``before_request`` demands the admin token for
every one of them; each view decodes the request and calls :mod:`coordinator.admin_api`,
which the gRPC Admin service calls too."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from coordinator import admin_api
from coordinator.auth import actor_id, bearer_token
from coordinator.rest.access import require_admin
from coordinator.rest.bodies import json_body
from coordinator.rest.state import current_state
from coordinator.serving.api import PREDICT_RULE, predict

__all__ = ["admin"]

admin = Blueprint("admin", __name__)
admin.before_request(require_admin)
admin.add_url_rule(PREDICT_RULE, "predict", predict, methods=["POST"])


@admin.get("/v1/clients")
def list_clients() -> Any:
    return admin_api.list_clients(current_state().service)


@admin.post("/v1/clients/<client_id>/revoke")
def revoke_client(client_id: str) -> Any:
    return admin_api.revoke_client(current_state().service, client_id, actor=_actor())


@admin.post("/v1/enrollment-tokens")
def create_enrollment_token() -> Any:
    body = json_body(optional=True)
    return admin_api.create_enrollment_token(current_state().service, body), 201


@admin.get("/v1/enrollment-tokens")
def list_enrollment_tokens() -> Any:
    return admin_api.list_enrollment_tokens(current_state().service)


@admin.post("/v1/enrollment-tokens/<token_id>/revoke")
def revoke_enrollment_token(token_id: str) -> Any:
    return admin_api.revoke_enrollment_token(current_state().service, token_id)


@admin.post("/v1/tasks")
def create_tasks() -> Any:
    return admin_api.create_tasks(current_state().service, json_body()), 201


@admin.post("/v1/rounds")
def open_round() -> Any:
    return admin_api.open_round(current_state().service, json_body(optional=True)), 201


@admin.get("/v1/rounds")
def list_rounds() -> Any:
    return admin_api.list_rounds(current_state().service)


@admin.get("/v1/rounds/<int:round_id>")
def show_round(round_id: int) -> Any:
    return admin_api.show_round(current_state().service, round_id)


@admin.post("/v1/rounds/<int:round_id>/cancel")
def cancel_round(round_id: int) -> Any:
    return admin_api.cancel_round(current_state().service, round_id)


@admin.get("/v1/models")
def list_models() -> Any:
    return admin_api.list_models(current_state().service)


@admin.get("/v1/models/<version>")
def show_model(version: str) -> Any:
    return admin_api.show_model(current_state().service, version)


def _actor() -> str:
    """The admin token's id (``require_admin`` has checked the header already)."""
    return actor_id("admin", bearer_token(request.headers.get("Authorization")))


@admin.post("/v1/models/<version>/promote")
def promote(version: str) -> Any:
    return admin_api.promote(current_state().service, version, actor=_actor())


@admin.post("/v1/models/rollback")
def rollback() -> Any:
    body = json_body(optional=True)
    return admin_api.rollback(current_state().service, body, actor=_actor())


@admin.get("/v1/quarantine")
def list_quarantine() -> Any:
    return admin_api.list_quarantine(current_state().service, request.args)


@admin.post("/v1/quarantine/<client_id>/release")
def release_quarantine(client_id: str) -> Any:
    return admin_api.release_quarantine(current_state().service, client_id, actor=_actor())


@admin.get("/v1/alerts")
def list_alerts() -> Any:
    return admin_api.list_alerts(current_state().service, request.args)


@admin.get("/v1/reports")
def list_reports() -> Any:
    return admin_api.list_reports(current_state().service, request.args)
