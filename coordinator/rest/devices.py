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

from typing import Any

from flask import Blueprint, Response, request, send_file

from coordinator import device_api
from coordinator.rest.access import (
    current_client,
    reader_client,
    require_client,
    require_enrollment,
    require_reader,
)
from coordinator.rest.bodies import json_body, refuse_unknown, update_submission
from coordinator.rest.secagg import register_secagg_routes
from coordinator.rest.state import current_state
from coordinator.views import receipt_document
from fedge.bundle import MANIFEST_NAME, WEIGHTS_FILE
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
    document, created = device_api.register(
        current_state(),
        region=body.get("region"),
        metadata=body.get("metadata"),
        registration_key=request.headers.get("Idempotency-Key"),
        authorization=request.headers.get("Authorization"),
    )
    return document, 201 if created else 200


@devices.post("/v1/clients/me/token")
def rotate_token() -> Any:
    """A new token for the calling client (the one its body proposes, or a random one); the
    one it called with stops working at once."""
    body = json_body(optional=True)
    refuse_unknown(body, {"token"})
    return device_api.rotate_token(current_state().service, current_client(), body.get("token"))


@devices.get("/v1/tasks/next")
def next_task() -> Any:
    service = current_state().service
    task = service.next_task(current_client())
    if task is None:
        response = Response(status=204)
        response.headers["Retry-After"] = str(device_api.retry_after_seconds(service))
        return response
    return task.to_dict()


@devices.post("/v1/tasks/<task_id>/decline")
def decline(task_id: str) -> Any:
    body = json_body()
    refuse_unknown(body, {"reason"})
    return device_api.decline(
        current_state().service, current_client(), task_id, body.get("reason")
    )


@devices.post("/v1/rounds/<int:round_id>/updates")
def upload(round_id: int) -> Any:
    service, client = current_state().service, current_client()
    with device_api.rejecting(service, client, round_id):
        submission = update_submission(round_id)
    receipt = service.submit_update(client, submission)
    return receipt_document(receipt), 200 if receipt.duplicate else 201


def _report(kind: str) -> Any:
    body = json_body()
    return device_api.submit_report(current_state().service, current_client(), kind, body), 201


@devices.post("/v1/stats")
def stats() -> Any:
    return _report("stats")


@devices.post("/v1/evaluations")
def evaluations() -> Any:
    return _report("evaluation")


@devices.post("/v1/features")
def features() -> Any:
    return _report("features")


def _artifact(version: str, name: str, mimetype: str) -> Response:
    service = current_state().service
    file = device_api.model_file(service, version, name)
    response = send_file(
        file.path,
        mimetype=mimetype,
        download_name=name,
        etag=file.sha256,
        conditional=True,
        max_age=0,
    )
    response.headers["X-Fedge-Sha256"] = file.sha256
    response.headers["X-Fedge-Model-Version"] = file.model.version
    client = reader_client()
    if client is not None and response.status_code in (200, 206) and response.content_length:
        service.count_download(client, file.model.version, response.content_length)
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
    device_api.check_bundle_file_name(name)
    mimetype = "application/json" if name.endswith(".json") else "application/octet-stream"
    return _artifact(version, name, mimetype)
