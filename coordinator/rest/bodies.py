"""Decoding what a request carries: JSON bodies, headers and update uploads.
Every problem is a :class:`~coordinator.errors.CoordinatorError` naming what was wrong."""

from __future__ import annotations

from typing import Any

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from coordinator import device_api
from coordinator.admin_api import refuse_unknown
from coordinator.codecs import CODEC_HEADER, COMPRESSED_MEDIA_TYPE
from coordinator.device_api import check_compression_codec, metrics_from_text, parse_count
from coordinator.errors import CoordinatorError, PayloadTooLargeError, UnsupportedMediaTypeError
from coordinator.intake import UpdateSubmission
from fedge.jsonlimits import loads_bounded

__all__ = ["json_body", "refuse_unknown", "update_submission"]


_JSON_LIMIT = 64 << 10
_JSON_DEPTH = 32


def json_body(*, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object; ``optional``: an empty body without a type is ``{}``.

    Read within the route's body limit (set by :func:`coordinator.rest.gate.check_body_limit`)
    and parsed with :func:`fedge.jsonlimits.loads_bounded`: at most 32 levels deep.
    """
    if optional and not request.content_length and not request.mimetype:
        return {}
    if request.mimetype != "application/json":
        raise UnsupportedMediaTypeError(
            f"expected Content-Type application/json, got {request.mimetype or 'none'!r}"
        )
    limit = request.max_content_length or _JSON_LIMIT
    try:
        raw = request.get_data(cache=False)
    except RequestEntityTooLarge as exc:
        raise PayloadTooLargeError(f"the body is over this route's {limit}-byte limit") from exc
    if optional and not raw:
        return {}
    try:
        document = loads_bounded(raw, max_depth=_JSON_DEPTH, max_bytes=limit)
    except ValueError as exc:  # invalid, too deep, or (read unbounded) too long
        raise CoordinatorError(f"the body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(document, dict):
        raise CoordinatorError(
            f"the body must be a JSON object, got {type(document).__name__}", code="invalid_json"
        )
    return document


def _header(name: str) -> str:
    value = request.headers.get(name)
    if not value:
        raise CoordinatorError(f"missing header {name}", code="missing_header")
    return value


def update_submission(round_id: int) -> UpdateSubmission:
    """An update upload: the body and the ``X-Fedge-*`` headers about it, checked by
    :func:`coordinator.device_api.update_submission`.

    ``application/octet-stream`` is the safetensors delta (codec ``none``);
    ``application/x-fedge-compressed`` is a :mod:`fedge.compression` payload whose codec
    the ``X-Fedge-Codec`` header names (``q8``, ``topk``).
    """
    if request.mimetype == "application/octet-stream":
        codec = "none"
    elif request.mimetype == COMPRESSED_MEDIA_TYPE:
        codec = check_compression_codec(_header(CODEC_HEADER))
    else:
        raise UnsupportedMediaTypeError(
            "an update body must be Content-Type application/octet-stream (safetensors) or "
            f"{COMPRESSED_MEDIA_TYPE} (with {CODEC_HEADER}), got {request.mimetype or 'none'!r}"
        )
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge as exc:
        raise PayloadTooLargeError(
            f"the update body is over the {request.max_content_length}-byte limit"
        ) from exc
    num_examples = parse_count(_header("X-Fedge-Num-Examples"))
    raw_metrics = request.headers.get("X-Fedge-Metrics")
    metrics = metrics_from_text(raw_metrics) if raw_metrics else {}
    return device_api.update_submission(
        round_id,
        body=body,
        codec=codec,
        num_examples=num_examples,
        metrics=metrics,
        delta_sha256=request.headers.get("X-Fedge-Delta-Sha256"),
        task_id=request.headers.get("X-Fedge-Task-Id"),
        idempotency_key=request.headers.get("Idempotency-Key", ""),
    )
