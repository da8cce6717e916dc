"""What devices call, in three blueprints by who may call them:

- ``enrollment``: registration (open, or the enrollment token when one is configured; a
  managed enrollment token works too and counts a use; idempotent with an
  ``Idempotency-Key``: a retry returns the same client and token, 200, and counts no use);
- ``devices``: polling for work and sending replies, the secure-aggregation stages
  included (:mod:`coordinator.rest.secagg`), and rotating the client's own token (a client
  token, never the admin's);
- ``downloads``: a model version's manifest, weights and bundle files (a client or the
  admin), with the file's sha256 as ETag so an unchanged file answers 304. A file a client
  downloads counts as ``bytes_down`` of every active round on that version that selected
  it (a 304 moves no file and counts nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, Response, request, send_file

from coordinator.errors import CoordinatorError
from coordinator.records import ClientRecord, ReportRecord
from coordinator.rest.access import (
    current_client,
    managed_enrollment_token,
    reader_client,
    require_client,
    require_enrollment,
    require_reader,
)
from coordinator.rest.bodies import json_body, refuse_unknown, update_submission
from coordinator.rest.secagg import register_secagg_routes
from coordinator.rest.state import current_state
from coordinator.views import receipt_document, report_document
from fedge.bundle import MANIFEST_NAME, WEIGHTS_FILE, check_file_name
from fedge.errors import BundleError, FedgeError
from fedge.messages import EvalReport, FeatureBatch, StatsReport
from fedge.signing import SIGNATURE_HEADER

__all__ = ["devices", "downloads", "enrollment"]

enrollment = Blueprint("enrollment", __name__)
enrollment.before_request(require_enrollment)

devices = Blueprint("devices", __name__)
devices.before_request(require_client)
register_secagg_routes(devices)  # POST/GET /v1/rounds/{r}/secagg/{stage}

downloads = Blueprint("downloads", __name__)
downloads.before_request(require_reader)


@enrollment.post("/v1/clients")
def register() -> Any:
    body = json_body(optional=True)
    refuse_unknown(body, {"region", "metadata"})
    registration = current_state().service.register_client(
        region=body.get("region"),
        metadata=body.get("metadata"),
        registration_key=request.headers.get("Idempotency-Key"),
        enrollment_token=managed_enrollment_token(),
    )
    document = {
        "client_id": registration.client_id,
        "token": registration.token,
        "token_type": "Bearer",
        "signing_key": current_state().service.signer.document()["current"],
    }
    return document, 201 if registration.created else 200


@devices.post("/v1/clients/me/token")
def rotate_token() -> Any:
    """A new token for the calling client (the one its body proposes, or a random one); the
    one it called with stops working at once."""
    body = json_body(optional=True)
    refuse_unknown(body, {"token"})
    client = current_client()
    token = current_state().service.rotate_client_token(client, body.get("token"))
    return {"client_id": client.client_id, "token": token, "token_type": "Bearer"}


@devices.get("/v1/tasks/next")
def next_task() -> Any:
    service = current_state().service
    task = service.next_task(current_client())
    if task is None:
        response = Response(status=204)
        response.headers["Retry-After"] = str(math.ceil(service.config.retry_after_seconds))
        return response
    return task.to_dict()


@devices.post("/v1/tasks/<task_id>/decline")
def decline(task_id: str) -> Any:
    body = json_body()
    refuse_unknown(body, {"reason"})
    reason = body.get("reason")
    if not isinstance(reason, str):
        raise CoordinatorError("the body must hold a text reason", code="invalid_reason")
    task = current_state().service.decline_task(current_client(), task_id, reason)
    return {"task_id": task.task_id, "status": task.status}


@devices.post("/v1/rounds/<int:round_id>/updates")
def upload(round_id: int) -> Any:
    service, client = current_state().service, current_client()
    try:
        submission = update_submission(round_id)
    except FedgeError as exc:
        service.reject_update(client, round_id, exc)
        raise
    receipt = service.submit_update(client, submission)
    return receipt_document(receipt), 200 if receipt.duplicate else 201


def _report(
    kind: str,
    decode: Callable[[Mapping[str, Any]], Any],
    submit: Callable[[ClientRecord, Any], ReportRecord],
) -> Any:
    body = json_body()
    body.setdefault("type", kind)
    body.setdefault("version", 1)
    return report_document(submit(current_client(), decode(body))), 201


@devices.post("/v1/stats")
def stats() -> Any:
    return _report("stats_report", StatsReport.from_dict, current_state().service.submit_stats)


@devices.post("/v1/evaluations")
def evaluations() -> Any:
    service = current_state().service
    return _report("eval_report", EvalReport.from_dict, service.submit_evaluation)


@devices.post("/v1/features")
def features() -> Any:
    service = current_state().service
    return _report("feature_batch", FeatureBatch.from_dict, service.submit_features)


def _artifact(version: str, name: str, mimetype: str) -> Response:
    service = current_state().service
    model = service.get_model(version)
    digest, path = service.registry.file(model, name)
    response = send_file(
        path,
        mimetype=mimetype,
        download_name=name,
        etag=digest,
        conditional=True,
        max_age=0,
    )
    response.headers["X-Fedge-Sha256"] = digest
    response.headers["X-Fedge-Model-Version"] = model.version
    client = reader_client()
    if client is not None and response.status_code in (200, 206) and response.content_length:
        service.count_download(client, model.version, response.content_length)
    return response


@downloads.get("/v1/models/<version>/manifest")
def manifest(version: str) -> Response:
    """The manifest, with the coordinator's Ed25519 signature over its exact bytes in
    ``X-Fedge-Signature`` (:mod:`fedge.signing`)."""
    response = _artifact(version, MANIFEST_NAME, "application/json")
    service = current_state().service
    response.headers[SIGNATURE_HEADER] = service.registry.signature(service.get_model(version))
    return response


@downloads.get("/v1/models/<version>/weights")
def weights(version: str) -> Response:
    return _artifact(version, WEIGHTS_FILE, "application/octet-stream")


@downloads.get("/v1/models/<version>/files/<path:name>")
def bundle_file(version: str, name: str) -> Response:
    try:
        check_file_name(name)
    except BundleError as exc:
        raise CoordinatorError(str(exc), code="invalid_file_name") from exc
    mimetype = "application/json" if name.endswith(".json") else "application/octet-stream"
    return _artifact(version, name, mimetype)
