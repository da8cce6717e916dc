"""JSON documents of the coordinator's records, shared by the REST API and the CLI.

One function per resource, so ``fedge-coordinator models show`` prints exactly what
``GET /v1/models/{version}`` returns, whichever backend the CLI talks to. Secrets (token
hashes) never appear in a document.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from coordinator.intake import UpdateReceipt
from coordinator.records import (
    AlertRecord,
    ClientRecord,
    EnrollmentTokenRecord,
    ModelEvent,
    ModelRecord,
    ReportRecord,
    RoundRecord,
    TaskRecord,
    UpdateRecord,
)
from coordinator.registry import iso_time
from coordinator.secagg import secagg_summary
from fedge.messages import EvalReport, PrivacyNote, StatsReport, encode_message
from fedge.stats import DatasetStats

__all__ = [
    "alert_document",
    "client_document",
    "enrollment_token_document",
    "model_document",
    "receipt_document",
    "report_document",
    "report_listing_document",
    "round_document",
    "task_record_document",
    "update_document",
]


def _time(value: float | None) -> str | None:
    return None if value is None else iso_time(value)


def client_document(client: ClientRecord) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "region": client.region,
        "metadata": dict(client.metadata),
        "registered_at": _time(client.registered_at),
        "revoked_at": _time(client.revoked_at),
    }


def enrollment_token_document(record: EnrollmentTokenRecord) -> dict[str, Any]:
    """A managed enrollment token as the API shows it: never its value nor its hash."""
    return {
        "token_id": record.token_id,
        "label": record.label,
        "created_at": _time(record.created_at),
        "expires_at": _time(record.expires_at),
        "max_uses": record.max_uses,
        "uses": record.uses,
        "revoked_at": _time(record.revoked_at),
    }


def model_document(model: ModelRecord, events: Sequence[ModelEvent] = ()) -> dict[str, Any]:
    doc = model.to_dict()
    for key in ("created_at", "promoted_at", "deployed_at"):
        doc[key] = _time(getattr(model, key))
    doc["events"] = [
        {
            "kind": e.kind,
            "at": _time(e.at),
            "previous": e.previous,
            "detail": e.detail,
            "actor": e.actor,
        }
        for e in events
    ]
    return doc


def round_document(
    round_: RoundRecord, updates: Sequence[UpdateRecord] = (), *, detail: bool = True
) -> dict[str, Any]:
    """A round; ``detail`` adds its accepted updates (``num_updates`` is always there)."""
    doc = round_.to_dict()
    for key in ("opened_at", "collecting_at", "deadline", "closed_at"):
        doc[key] = _time(getattr(round_, key))
    doc["secagg"] = secagg_summary(round_)
    doc["num_updates"] = len(updates)
    doc["updates"] = [update_document(u) for u in updates]
    if not detail:
        del doc["updates"]
    return doc


def update_document(update: UpdateRecord) -> dict[str, Any]:
    """An accepted update; ``quarantine`` is why it was held out of aggregation (None:
    never), ``released_at`` when an operator released it."""
    return {
        "round_id": update.round_id,
        "client_id": update.client_id,
        "task_id": update.task_id,
        "num_examples": update.num_examples,
        "l2_norm": update.l2_norm,
        "sha256": update.sha256,
        "received_at": _time(update.received_at),
        "metrics": dict(update.metrics),
        "quarantine": update.quarantine,
        "released_at": _time(update.released_at),
    }


def receipt_document(receipt: UpdateReceipt) -> dict[str, Any]:
    return {
        "round_id": receipt.round_id,
        "client_id": receipt.client_id,
        "task_id": receipt.task_id,
        "sha256": receipt.sha256,
        "num_examples": receipt.num_examples,
        "received_at": _time(receipt.received_at),
        "duplicate": receipt.duplicate,
    }


def report_document(report: ReportRecord) -> dict[str, Any]:
    return {
        "report_id": report.report_id,
        "kind": report.kind,
        "client_id": report.client_id,
        "task_id": report.task_id,
        "model_version": report.model_version,
        "received_at": _time(report.received_at),
    }


def report_listing_document(report: ReportRecord) -> dict[str, Any]:
    """A stored report with its content: the message document as the codec encodes it;
    for features only the shape and artifact digest, never the embeddings."""
    stored: dict[str, Any] = report.to_dict()["document"]
    content: dict[str, Any]
    if report.kind == "evaluation":
        content = encode_message(EvalReport.from_dict(stored))[0]
    elif report.kind == "stats":
        note = stored.get("privacy")
        privacy = None if note is None else PrivacyNote.from_dict(note)
        stats = StatsReport(report.task_id, DatasetStats.from_dict(stored), privacy=privacy)
        content = encode_message(stats)[0]
    else:
        content = {
            "task_id": report.task_id,
            "num_rows": stored.get("rows"),
            "dim": stored.get("width"),
            "sha256": stored.get("sha256"),
        }
        for key in ("privacy", "counts"):
            if stored.get(key) is not None:
                content[key] = stored[key]
    return {**report_document(report), "document": content}


def task_record_document(task: TaskRecord) -> dict[str, Any]:
    doc = task.to_dict()
    for key in ("created_at", "deadline", "completed_at"):
        doc[key] = _time(getattr(task, key))
    return doc


def alert_document(alert: AlertRecord) -> dict[str, Any]:
    doc = alert.to_dict()
    doc["created_at"] = _time(alert.created_at)
    return doc
