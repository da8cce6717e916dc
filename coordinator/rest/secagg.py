"""The secure-aggregation routes of the ``devices`` blueprint (a client token):
``GET``/``POST /v1/rounds/{r}/secagg/{stage}`` (see :mod:`coordinator.secagg`).

A POST carries ``X-Fedge-Task-Id`` and ``Idempotency-Key``; ``advertise``, ``share`` and
``unmask`` take the JSON document of :func:`fedge.secagg.encode_secagg`, ``mask`` the
masked vector as ``application/octet-stream`` (with an optional ``X-Fedge-Metrics``). A
201 acknowledges a stored message, a 200 (``duplicate``) a retry of it. A GET (or POST)
for a stage the round is not at answers 409 ``secagg_stage`` with ``Retry-After``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from coordinator.device_api import (
    metrics_from_text,
    rejecting,
    secagg_receipt_document,
    submit_secagg,
)
from coordinator.errors import PayloadTooLargeError, UnsupportedMediaTypeError
from coordinator.rest.access import current_client
from coordinator.rest.bodies import json_body
from coordinator.rest.state import current_state
from coordinator.secagg import PAYLOAD_STAGES, SECAGG_STAGES, SecAggReceipt, SecAggStageError

__all__ = ["SECAGG_PATH", "register_secagg_routes"]

SECAGG_PATH = "/v1/rounds/<int:round_id>/secagg/{stage}"


def _receipt(receipt: SecAggReceipt) -> tuple[dict[str, Any], int]:
    return secagg_receipt_document(receipt), 200 if receipt.duplicate else 201


def _stage_conflict(exc: SecAggStageError) -> Response:
    response = jsonify({"error": exc.code, "detail": str(exc)})
    response.status_code = 409
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _metrics() -> dict[str, Any] | None:
    raw = request.headers.get("X-Fedge-Metrics")
    return metrics_from_text(raw) if raw else None


def _binary_body() -> bytes:
    if request.mimetype != "application/octet-stream":
        raise UnsupportedMediaTypeError(
            "a masked input is Content-Type application/octet-stream, got "
            f"{request.mimetype or 'none'!r}"
        )
    try:
        return request.get_data(cache=False)
    except RequestEntityTooLarge as exc:
        raise PayloadTooLargeError(
            f"the body is over this route's {request.max_content_length}-byte limit"
        ) from exc


def secagg_payload(round_id: int, stage: str) -> Any:
    service = current_state().service
    try:
        return service.secagg_payload(current_client(), round_id, stage)
    except SecAggStageError as exc:
        return _stage_conflict(exc)


def secagg_submit(round_id: int, stage: str) -> Any:
    service, client = current_state().service, current_client()
    with rejecting(service, client, round_id):
        if stage == "mask":
            body, document = _binary_body(), None
        else:
            body, document = None, json_body()
        metrics = _metrics()
    try:
        receipt = submit_secagg(
            service,
            client,
            round_id,
            stage,
            task_id=request.headers.get("X-Fedge-Task-Id"),
            idempotency_key=request.headers.get("Idempotency-Key", ""),
            document=document,
            body=body,
            metrics=metrics,
        )
    except SecAggStageError as exc:
        return _stage_conflict(exc)
    return _receipt(receipt)


def register_secagg_routes(blueprint: Blueprint) -> None:
    """Add the secure-aggregation routes to ``blueprint`` (the devices blueprint): a POST
    for every stage, a GET for the stages with a payload."""
    for stage in SECAGG_STAGES:
        path = SECAGG_PATH.format(stage=stage)
        blueprint.add_url_rule(
            path,
            endpoint=f"secagg_{stage}_post",
            view_func=secagg_submit,
            methods=["POST"],
            defaults={"stage": stage},
        )
        if stage in PAYLOAD_STAGES:
            blueprint.add_url_rule(
                path,
                endpoint=f"secagg_{stage}_get",
                view_func=secagg_payload,
                methods=["GET"],
                defaults={"stage": stage},
            )
