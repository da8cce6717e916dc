"""The operator's operations, whatever the transport: each takes the service and what the
call carried (a path id, a JSON body, query parameters) and returns the answer's JSON
document. The REST admin blueprint (:mod:`coordinator.rest.admin`) and the gRPC Admin
service (:mod:`coordinator.rpc.admin`) call these, so an answer is the same document on both,
and both refuse a malformed request with the same error.

Access (the admin token) is the caller's to check first
(:func:`coordinator.access.require_admin`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from coordinator.errors import CoordinatorError, NotFoundError
from coordinator.predictions import drift_document, version_drift
from coordinator.records import ModelRecord
from coordinator.service import CoordinatorService
from coordinator.views import (
    alert_document,
    client_document,
    enrollment_token_document,
    model_document,
    report_listing_document,
    round_document,
    task_record_document,
    update_document,
)
from fedge.messages import TaskConfig
from fedge.validation import check_number

__all__ = [
    "cancel_round",
    "create_enrollment_token",
    "create_tasks",
    "float_query",
    "list_alerts",
    "list_clients",
    "list_enrollment_tokens",
    "list_models",
    "list_quarantine",
    "list_reports",
    "list_rounds",
    "model_detail",
    "open_round",
    "parse_instant",
    "promote",
    "refuse_unknown",
    "release_quarantine",
    "revoke_client",
    "revoke_enrollment_token",
    "rollback",
    "round_id_from_text",
    "show_model",
    "show_round",
]

Document = dict[str, Any]
Query = Mapping[str, str]


# Request checks -------------------------------------------------------------------------------


def refuse_unknown(body: Mapping[str, Any], known: set[str]) -> None:
    """400 ``invalid_request`` naming the keys of ``body`` that are not in ``known``."""
    unknown = sorted(set(body) - known)
    if unknown:
        raise CoordinatorError(f"unknown fields {unknown}", code="invalid_request")


def float_query(name: str, text: str | None) -> float | None:
    """The finite number query parameter ``name`` holds (``text``), or None when absent."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise CoordinatorError(f"query parameter {name} must be a number", code="invalid_query")
    return value


def parse_instant(text: object, what: str = "before") -> float:
    """Seconds since the epoch of an ISO 8601 time (``2026-11-30T04:00:00Z``; UTC unless it
    names its offset); 400 ``invalid_time`` naming ``what`` otherwise."""
    if isinstance(text, str):
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp()
    raise CoordinatorError(
        f"{what} must be an ISO 8601 time such as 2026-11-30T04:00:00Z, got {text!r}",
        code="invalid_time",
    )


def round_id_from_text(text: str) -> int:
    """The round id a path segment names; 404 when it is not one (as an unknown route)."""
    if not (text.isascii() and text.isdigit()):
        raise NotFoundError(f"no round {text!r}: a round id is a positive integer")
    return int(text)


# Clients and enrollment tokens ----------------------------------------------------------------


def list_clients(service: CoordinatorService) -> Document:
    return {"clients": [client_document(c) for c in service.store.list_clients()]}


def revoke_client(
    service: CoordinatorService, client_id: str, *, actor: str | None = None
) -> Document:
    """``actor``: the operator's token id, recorded on the registry event."""
    return client_document(service.revoke_client(client_id, actor=actor))


def create_enrollment_token(service: CoordinatorService, body: Mapping[str, Any]) -> Document:
    refuse_unknown(body, {"label", "expires_in", "max_uses"})
    issued = service.create_enrollment_token(
        label=body.get("label"), expires_in=body.get("expires_in"), max_uses=body.get("max_uses")
    )
    return {**enrollment_token_document(issued.record), "token": issued.token}


def list_enrollment_tokens(service: CoordinatorService) -> Document:
    records = service.list_enrollment_tokens()
    return {"enrollment_tokens": [enrollment_token_document(r) for r in records]}


def revoke_enrollment_token(service: CoordinatorService, token_id: str) -> Document:
    return enrollment_token_document(service.revoke_enrollment_token(token_id))


# Tasks and rounds -----------------------------------------------------------------------------


def create_tasks(service: CoordinatorService, body: Mapping[str, Any]) -> Document:
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
    tasks = service.create_tasks(
        str(body.get("kind")),
        client_ids=client_ids,
        deadline_seconds=deadline,
        config=TaskConfig.from_dict(body["config"]) if "config" in body else None,
    )
    return {"tasks": [task_record_document(t) for t in tasks]}


def open_round(service: CoordinatorService, overrides: Mapping[str, Any]) -> Document:
    return round_document(service.open_round(overrides))


def list_rounds(service: CoordinatorService) -> Document:
    return {
        "rounds": [
            round_document(r, service.round_updates(r.round_id), detail=False)
            for r in service.list_rounds()
        ]
    }


def show_round(service: CoordinatorService, round_id: int) -> Document:
    return round_document(service.get_round(round_id), service.round_updates(round_id))


def cancel_round(service: CoordinatorService, round_id: int) -> Document:
    return round_document(service.cancel_round(round_id), service.round_updates(round_id))


# Models ---------------------------------------------------------------------------------------


def list_models(service: CoordinatorService) -> Document:
    return {"models": [model_document(m) for m in service.list_models()]}


def model_detail(service: CoordinatorService, model: ModelRecord) -> Document:
    """One version's document: its events and its ``predictions`` section (prediction and
    label drift from the evaluation reports, :mod:`coordinator.predictions`)."""
    drift = version_drift(service.store, model.version, service.config.alerts)
    return {
        **model_document(model, service.model_events(model.version)),
        "predictions": drift_document(drift),
    }


def show_model(service: CoordinatorService, version: str) -> Document:
    return model_detail(service, service.get_model(version))


def promote(service: CoordinatorService, version: str, *, actor: str | None = None) -> Document:
    """``actor``: the operator's token id, recorded on the registry event."""
    return model_detail(service, service.promote(version, actor=actor))


def rollback(
    service: CoordinatorService, body: Mapping[str, Any], *, actor: str | None = None
) -> Document:
    """Body ``{}``: the previous production version back; ``{"before": TIME}`` (ISO 8601):
    the version that was production at that time back. ``actor`` as for :func:`promote`."""
    refuse_unknown(body, {"before"})
    if body.get("before") is None:
        return model_detail(service, service.rollback(actor=actor))
    when = parse_instant(body["before"])
    return model_detail(service, service.rollback_before(when, actor=actor))


# Quarantine -----------------------------------------------------------------------------------


def list_quarantine(service: CoordinatorService, query: Query) -> Document:
    """The updates held in quarantine, oldest first; query ``client_id``: one client's."""
    updates = service.list_quarantined(query.get("client_id"))
    return {"updates": [update_document(u) for u in updates]}


def release_quarantine(
    service: CoordinatorService, client_id: str, *, actor: str | None = None
) -> Document:
    """Release a client's quarantined updates; the updates released (none: ``[]``).
    ``actor`` as for :func:`revoke_client`."""
    released = service.release_quarantine(client_id, actor=actor)
    return {"client_id": client_id, "released": [update_document(u) for u in released]}


# Alerts and reports ---------------------------------------------------------------------------


def list_alerts(service: CoordinatorService, query: Query) -> Document:
    """Query ``kind`` and ``since`` (seconds since the epoch)."""
    alerts = service.store.list_alerts(
        kind=query.get("kind"), since=float_query("since", query.get("since"))
    )
    return {"alerts": [alert_document(a) for a in alerts]}


def list_reports(service: CoordinatorService, query: Query) -> Document:
    """Query ``kind``, ``task_id`` and ``model_version``."""
    reports = service.list_reports(
        query.get("kind"), task_id=query.get("task_id"), model_version=query.get("model_version")
    )
    return {"reports": [report_listing_document(r) for r in reports]}
