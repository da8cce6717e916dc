"""The REST adapter: a Flask app factory over a CoordinatorService. Thin by design: each
view authenticates, decodes, calls the service and encodes; every error becomes
``{"error": code, "detail": message}`` in :func:`_error_response`, the one mapping.

Authentication is ``Authorization: Bearer <token>``: a client token (from registration)
for client endpoints, the admin token for admin endpoints; downloads take either.
Registration is open unless an enrollment token is configured. Serve the app with a
production WSGI server (:mod:`coordinator.server` uses waitress), never the dev server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from flask import Flask, Response, jsonify, request, send_file
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from coordinator.auth import bearer_token, token_matches
from coordinator.errors import (
    AuthenticationError,
    CoordinatorError,
    PayloadTooLargeError,
    PermissionDeniedError,
    UnsupportedMediaTypeError,
    describe,
)
from coordinator.intake import UpdateSubmission
from coordinator.metrics import CONTENT_TYPE, render_metrics
from coordinator.openapi import build_openapi
from coordinator.records import ClientRecord
from coordinator.rest_admin import register_admin_routes
from coordinator.service import CoordinatorService
from coordinator.views import receipt_document, report_document
from fedge.bundle import MANIFEST_NAME, WEIGHTS_FILE, check_file_name
from fedge.errors import BundleError, FedgeError
from fedge.messages import EvalReport, FeatureBatch, StatsReport

__all__ = ["ApiConfig", "RequestContext", "create_app"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiConfig:
    """Secrets (as sha256 hashes only) and limits of the HTTP API.

    ``admin_token_hash`` None disables admin endpoints; ``enrollment_token_hash`` None
    leaves registration open. ``max_content_length`` defaults to the service's
    ``max_update_bytes``.
    """

    admin_token_hash: str | None = None
    enrollment_token_hash: str | None = None
    max_content_length: int | None = None


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


class RequestContext:
    """Authentication and body decoding for the views of one app."""

    def __init__(self, service: CoordinatorService, config: ApiConfig) -> None:
        self.service = service
        self.config = config

    def _is_admin(self, token: str) -> bool:
        expected = self.config.admin_token_hash
        return expected is not None and token_matches(token, expected)

    def client(self) -> ClientRecord:
        token = bearer_token(request.headers.get("Authorization"))
        if self._is_admin(token):
            raise PermissionDeniedError(
                "this endpoint needs a client token, not the admin token",
                code="client_token_required",
            )
        return self.service.authenticate(token)

    def admin(self) -> None:
        token = bearer_token(request.headers.get("Authorization"))
        if self._is_admin(token):
            return
        if self.config.admin_token_hash is None:
            raise PermissionDeniedError(
                "admin endpoints are disabled: start the server with --admin-token-file "
                "or FEDGE_ADMIN_TOKEN",
                code="admin_disabled",
            )
        self.service.authenticate(token)  # an unknown token is a 401, a client's a 403
        raise PermissionDeniedError("this endpoint needs the admin token", code="admin_required")

    def reader(self) -> None:
        """Downloads: any client, or the admin."""
        token = bearer_token(request.headers.get("Authorization"))
        if not self._is_admin(token):
            self.service.authenticate(token)

    def enrollment(self) -> None:
        expected = self.config.enrollment_token_hash
        if expected is None:
            return
        token = bearer_token(request.headers.get("Authorization"))
        if not (token_matches(token, expected) or self._is_admin(token)):
            raise AuthenticationError("unknown enrollment token", code="invalid_token")

    def json_body(self, *, optional: bool = False) -> dict[str, Any]:
        if optional and not request.content_length and not request.mimetype:
            return {}
        if request.mimetype != "application/json":
            raise UnsupportedMediaTypeError(
                f"expected Content-Type application/json, got {request.mimetype or 'none'!r}"
            )
        raw = request.get_data(cache=False)
        if optional and not raw:
            return {}
        try:
            document = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise CoordinatorError(
                f"the body is not valid JSON: {exc}", code="invalid_json"
            ) from exc
        if not isinstance(document, dict):
            raise CoordinatorError(
                f"the body must be a JSON object, got {type(document).__name__}",
                code="invalid_json",
            )
        return document


def _error_response(status: int, code: str, detail: str) -> Response:
    response = jsonify({"error": code, "detail": detail})
    response.status_code = status
    return response


def _header(name: str) -> str:
    value = request.headers.get(name)
    if not value:
        raise CoordinatorError(f"missing header {name}", code="missing_header")
    return value


def _submission(round_id: int) -> UpdateSubmission:
    if request.mimetype != "application/octet-stream":
        raise UnsupportedMediaTypeError(
            "an update body must be Content-Type application/octet-stream (safetensors), "
            f"got {request.mimetype or 'none'!r}"
        )
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge as exc:
        raise PayloadTooLargeError(
            f"the update body is over the {request.max_content_length}-byte limit"
        ) from exc
    text = _header("X-Fedge-Num-Examples")
    try:
        num_examples = int(text)
    except ValueError:
        raise CoordinatorError(
            f"X-Fedge-Num-Examples must be an integer, got {text[:40]!r}", code="invalid_header"
        ) from None
    metrics: Any = {}
    if raw_metrics := request.headers.get("X-Fedge-Metrics"):
        try:
            metrics = json.loads(raw_metrics, parse_constant=_refuse_constant)
        except ValueError as exc:
            raise CoordinatorError(
                f"X-Fedge-Metrics must be a JSON object: {exc}", code="invalid_header"
            ) from exc
        if not isinstance(metrics, dict):
            raise CoordinatorError("X-Fedge-Metrics must be a JSON object", code="invalid_header")
    digest = request.headers.get("X-Fedge-Delta-Sha256")
    if digest and digest.lower() != hashlib.sha256(body).hexdigest():
        raise CoordinatorError(
            "the body does not match X-Fedge-Delta-Sha256 (corrupted in transit?)",
            code="digest_mismatch",
        )
    return UpdateSubmission(
        round_id=round_id,
        task_id=_header("X-Fedge-Task-Id"),
        num_examples=num_examples,
        idempotency_key=request.headers.get("Idempotency-Key", ""),
        body=body,
        metrics=metrics,
    )


def create_app(service: CoordinatorService, config: ApiConfig) -> Flask:
    """The Flask app serving ``service``; no module-level state, one app per call."""
    app = Flask("coordinator", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = config.max_content_length or service.config.max_update_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    ctx = RequestContext(service, config)

    @app.errorhandler(FedgeError)
    def fedge_error(exc: FedgeError) -> Response:
        status, code = describe(exc)
        return _error_response(status, code, str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        response = _error_response(exc.code or 500, code, exc.description or code)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(500, "internal_error", "internal server error")

    @app.after_request
    def access_log(response: Response) -> Response:
        logger.info("%s %s -> %d", request.method, request.path, response.status_code)
        return response

    def route(rule: str, methods: list[str]) -> Callable[[Callable[..., Any]], Any]:
        return app.route(rule, methods=methods)

    @route("/healthz", ["GET"])
    def healthz() -> Any:
        models = service.store.list_models(stage="production")
        return {"status": "ok", "model_version": models[-1].version if models else None}

    @route("/metrics", ["GET"])
    def metrics() -> Response:
        return Response(render_metrics(service.store), content_type=CONTENT_TYPE)

    @route("/v1/openapi.json", ["GET"])
    def openapi() -> Any:
        return build_openapi()

    @route("/v1/clients", ["POST"])
    def register() -> Any:
        ctx.enrollment()
        body = ctx.json_body(optional=True)
        unknown = sorted(set(body) - {"region", "metadata"})
        if unknown:
            raise CoordinatorError(f"unknown fields {unknown}", code="invalid_request")
        registration = service.register_client(
            region=body.get("region"), metadata=body.get("metadata")
        )
        document = {
            "client_id": registration.client_id,
            "token": registration.token,
            "token_type": "Bearer",
        }
        return document, 201

    @route("/v1/tasks/next", ["GET"])
    def next_task() -> Any:
        task = service.next_task(ctx.client())
        if task is None:
            response = Response(status=204)
            response.headers["Retry-After"] = str(math.ceil(service.config.retry_after_seconds))
            return response
        return task.to_dict()

    @route("/v1/rounds/<int:round_id>/updates", ["POST"])
    def upload(round_id: int) -> Any:
        client = ctx.client()
        try:
            submission = _submission(round_id)
        except FedgeError as exc:
            service.reject_update(client, round_id, exc)
            raise
        receipt = service.submit_update(client, submission)
        return receipt_document(receipt), 200 if receipt.duplicate else 201

    def _report(kind: str, decode: Callable[[dict[str, Any]], Any], submit: Any) -> Any:
        client = ctx.client()
        body = ctx.json_body()
        body.setdefault("type", kind)
        body.setdefault("version", 1)
        return report_document(submit(client, decode(body))), 201

    @route("/v1/stats", ["POST"])
    def stats() -> Any:
        return _report("stats_report", StatsReport.from_dict, service.submit_stats)

    @route("/v1/evaluations", ["POST"])
    def evaluations() -> Any:
        return _report("eval_report", EvalReport.from_dict, service.submit_evaluation)

    @route("/v1/features", ["POST"])
    def features() -> Any:
        return _report("feature_batch", FeatureBatch.from_dict, service.submit_features)

    def _artifact(version: str, name: str, mimetype: str) -> Response:
        ctx.reader()
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
        return response

    @route("/v1/models/<version>/manifest", ["GET"])
    def manifest(version: str) -> Response:
        return _artifact(version, MANIFEST_NAME, "application/json")

    @route("/v1/models/<version>/weights", ["GET"])
    def weights(version: str) -> Response:
        return _artifact(version, WEIGHTS_FILE, "application/octet-stream")

    @route("/v1/models/<version>/files/<path:name>", ["GET"])
    def bundle_file(version: str, name: str) -> Response:
        try:
            check_file_name(name)
        except BundleError as exc:
            ctx.reader()
            raise CoordinatorError(str(exc), code="invalid_file_name") from exc
        mimetype = "application/json" if name.endswith(".json") else "application/octet-stream"
        return _artifact(version, name, mimetype)

    register_admin_routes(app, ctx)
    return app
