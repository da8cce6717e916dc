"""What a device call does once its transport has decoded it: the checks and the service
calls shared by the REST views (:mod:`coordinator.rest.devices`) and the gRPC Fleet
servicer (:mod:`coordinator.rpc.fleet`), so that no rule exists twice.

Each function takes plain values (already out of the headers, body or proto message) and
returns the REST JSON document of the answer; the gRPC adapter converts that document with
:mod:`fedge.protocol.codec`. Messages name the REST headers where REST has them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordinator.access import managed_enrollment_token
from coordinator.codecs import CODEC_HEADER
from coordinator.errors import CoordinatorError
from coordinator.intake import UpdateReceipt, UpdateSubmission
from coordinator.records import ClientRecord, ModelRecord
from coordinator.secagg import SecAggReceipt
from coordinator.service import CoordinatorService
from coordinator.views import receipt_document, report_document
from fedge.bundle import check_file_name
from fedge.compression import CODEC_NAMES
from fedge.errors import BundleError, FedgeError
from fedge.jsonlimits import loads_bounded
from fedge.messages import EvalReport, FeatureBatch, StatsReport

if TYPE_CHECKING:
    from coordinator.rest.state import RestState

__all__ = [
    "MAX_METRICS_BYTES",
    "REPORT_KINDS",
    "TASK_ID_LIMIT",
    "ModelFile",
    "check_bundle_file_name",
    "check_compression_codec",
    "check_metrics_size",
    "check_task_id",
    "decline",
    "metrics_from_text",
    "model_file",
    "parse_count",
    "register",
    "rejecting",
    "retry_after_seconds",
    "rotate_token",
    "secagg_receipt_document",
    "submit_report",
    "submit_secagg",
    "update_receipt_document",
    "update_submission",
]

TASK_ID_LIMIT = 256
"""The longest task id a device may send (those the coordinator issues are far shorter)."""
MAX_METRICS_BYTES = 16 << 10
"""The most bytes an update's metrics take as JSON (REST: the ``X-Fedge-Metrics`` header)."""

REPORT_KINDS: dict[str, str] = {
    "stats": "stats_report",
    "evaluation": "eval_report",
    "features": "feature_batch",
}
"""The device reports by kind (REST: ``/v1/stats``, ``/v1/evaluations``, ``/v1/features``)
and their documents' ``type``."""


@contextlib.contextmanager
def rejecting(
    service: CoordinatorService, client: ClientRecord, round_id: int | None
) -> Iterator[None]:
    """Record any fedge error raised inside as a rejected update of ``client`` in
    ``round_id`` (then re-raise it), as every decoding failure of an upload is."""
    try:
        yield
    except FedgeError as exc:
        service.reject_update(client, round_id, exc)
        raise


# Enrollment and tokens ----------------------------------------------------------------------


def register(
    state: RestState,
    *,
    region: str | None,
    metadata: Mapping[str, str] | None,
    registration_key: str | None,
    authorization: str | None,
) -> tuple[dict[str, Any], bool]:
    """Register a client (access already checked by
    :func:`coordinator.access.require_enrollment`): the registration answer and whether a
    client was created (False: a retry with the same registration key)."""
    service = state.service
    registration = service.register_client(
        region=region,
        metadata=metadata,
        registration_key=registration_key,
        enrollment_token=managed_enrollment_token(state, authorization),
    )
    document = {
        "client_id": registration.client_id,
        "token": registration.token,
        "token_type": "Bearer",
        "signing_key": service.signer.document()["current"],
    }
    return document, registration.created


def rotate_token(
    service: CoordinatorService, client: ClientRecord, proposed: str | None
) -> dict[str, Any]:
    """A new token for ``client`` (``proposed``, or a random one); the old one stops."""
    token = service.rotate_client_token(client, proposed)
    return {"client_id": client.client_id, "token": token, "token_type": "Bearer"}


# Tasks ------------------------------------------------------------------------------------


def retry_after_seconds(service: CoordinatorService) -> int:
    """How long a client without a task waits before it asks again (whole seconds)."""
    return math.ceil(service.config.retry_after_seconds)


def decline(
    service: CoordinatorService, client: ClientRecord, task_id: str, reason: Any
) -> dict[str, Any]:
    """``client`` declines its pending task ``task_id`` for ``reason`` (a text)."""
    if not isinstance(reason, str):
        raise CoordinatorError("the body must hold a text reason", code="invalid_reason")
    task = service.decline_task(client, task_id, reason)
    return {"task_id": task.task_id, "status": task.status}


# Updates ------------------------------------------------------------------------------------


def check_compression_codec(codec: str) -> str:
    """``codec`` when it names a compression codec (:data:`fedge.compression.CODEC_NAMES`)."""
    if codec not in CODEC_NAMES:
        raise CoordinatorError(
            f"{CODEC_HEADER} must be one of {list(CODEC_NAMES)}, got {codec[:40]!r}",
            code="invalid_header",
        )
    return codec


def parse_count(text: str) -> int:
    """The example count of an update as REST sends it (``X-Fedge-Num-Examples``)."""
    try:
        return int(text)
    except ValueError:
        raise CoordinatorError(
            f"X-Fedge-Num-Examples must be an integer, got {text[:40]!r}", code="invalid_header"
        ) from None


def metrics_from_text(raw: str) -> dict[str, Any]:
    """An update's metrics as REST sends them (the JSON object of ``X-Fedge-Metrics``), at
    most :data:`MAX_METRICS_BYTES` and two levels deep."""
    try:
        metrics = loads_bounded(raw, max_depth=2, max_bytes=MAX_METRICS_BYTES)
    except ValueError as exc:
        raise CoordinatorError(
            f"X-Fedge-Metrics must be a JSON object: {exc}", code="invalid_header"
        ) from exc
    if not isinstance(metrics, dict):
        raise CoordinatorError("X-Fedge-Metrics must be a JSON object", code="invalid_header")
    return metrics


def check_metrics_size(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics that arrived as a map rather than as JSON text, held to the same
    :data:`MAX_METRICS_BYTES` as their JSON."""
    size = len(json.dumps(dict(metrics), separators=(",", ":")).encode())
    if size > MAX_METRICS_BYTES:
        raise CoordinatorError(
            f"X-Fedge-Metrics must be a JSON object of at most {MAX_METRICS_BYTES} bytes, got "
            f"{size}",
            code="invalid_header",
        )
    return dict(metrics)


def check_task_id(task_id: str | None) -> str:
    """The task id an update names, present and at most :data:`TASK_ID_LIMIT` characters."""
    if not task_id:
        raise CoordinatorError("missing header X-Fedge-Task-Id", code="missing_header")
    if len(task_id) > TASK_ID_LIMIT:
        raise CoordinatorError(
            f"X-Fedge-Task-Id is {len(task_id)} characters, over the {TASK_ID_LIMIT}-character "
            "limit",
            code="invalid_header",
        )
    return task_id


def update_submission(
    round_id: int,
    *,
    body: bytes,
    codec: str,
    num_examples: int,
    metrics: Mapping[str, Any],
    delta_sha256: str | None,
    task_id: str | None,
    idempotency_key: str,
) -> UpdateSubmission:
    """An update as both transports check it: codec ``none`` (a safetensors delta) or a
    compression codec, a body that matches ``delta_sha256`` (when given) and a task id of at
    most :data:`TASK_ID_LIMIT` characters."""
    if codec != "none":
        check_compression_codec(codec)
    if delta_sha256 and delta_sha256.lower() != hashlib.sha256(body).hexdigest():
        raise CoordinatorError(
            "the body does not match X-Fedge-Delta-Sha256 (corrupted in transit?)",
            code="digest_mismatch",
        )
    return UpdateSubmission(
        round_id=round_id,
        task_id=check_task_id(task_id),
        num_examples=num_examples,
        idempotency_key=idempotency_key,
        body=body,
        metrics=metrics,
        codec=codec,
    )


def update_receipt_document(receipt: UpdateReceipt) -> dict[str, Any]:
    return receipt_document(receipt)


# Reports ------------------------------------------------------------------------------------


def submit_report(
    service: CoordinatorService, client: ClientRecord, kind: str, document: dict[str, Any]
) -> dict[str, Any]:
    """Decode a device report of ``kind`` (a key of :data:`REPORT_KINDS`) from its REST
    document (``type`` and ``version`` filled in when absent), store it and answer its
    receipt document."""
    document.setdefault("type", REPORT_KINDS[kind])
    document.setdefault("version", 1)
    if kind == "stats":
        record = service.submit_stats(client, StatsReport.from_dict(document))
    elif kind == "evaluation":
        record = service.submit_evaluation(client, EvalReport.from_dict(document))
    else:
        record = service.submit_features(client, FeatureBatch.from_dict(document))
    return report_document(record)


# Secure aggregation -----------------------------------------------------------------------


def submit_secagg(
    service: CoordinatorService,
    client: ClientRecord,
    round_id: int,
    stage: str,
    *,
    task_id: str | None,
    idempotency_key: str,
    document: Mapping[str, Any] | None,
    body: bytes | None,
    metrics: Mapping[str, Any] | None,
) -> SecAggReceipt:
    """A client's message for a secure round's ``stage``; a missing or overlong task id is
    recorded as a rejected update."""
    if not task_id or len(task_id) > TASK_ID_LIMIT:
        error = CoordinatorError(
            f"missing header X-Fedge-Task-Id (at most {TASK_ID_LIMIT} characters)",
            code="missing_header",
        )
        service.reject_update(client, round_id, error)
        raise error
    return service.submit_secagg(
        client,
        round_id,
        stage,
        task_id=task_id,
        idempotency_key=idempotency_key,
        document=document,
        body=body,
        metrics=metrics,
    )


def secagg_receipt_document(receipt: SecAggReceipt) -> dict[str, Any]:
    return {
        "round_id": receipt.round_id,
        "stage": receipt.stage,
        "client_id": receipt.client_id,
        "duplicate": receipt.duplicate,
    }


# Downloads --------------------------------------------------------------------------------


def check_bundle_file_name(name: str) -> str:
    """``name`` when it names a file inside a bundle (no path traversal)."""
    try:
        check_file_name(name)
    except BundleError as exc:
        raise CoordinatorError(str(exc), code="invalid_file_name") from exc
    return name


@dataclass(frozen=True)
class ModelFile:
    """A file of a model version: its model, name, sha256 and path."""

    model: ModelRecord
    name: str
    sha256: str
    path: Path


def model_file(service: CoordinatorService, version: str, name: str) -> ModelFile:
    """File ``name`` of model ``version`` (NotFoundError for either unknown)."""
    model = service.get_model(version)
    digest, path = service.registry.file(model, name)
    return ModelFile(model, name, digest, Path(path))
