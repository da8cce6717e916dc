"""The one place where exceptions become HTTP answers: ``{"error": code, "detail": message}``.

Fedge errors take the status and code of :func:`coordinator.errors.describe`; werkzeug's
HTTP errors (unknown route, wrong method, body over the limit) keep their status with a
snake_case code; anything else is logged and answered 500 without details.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from coordinator.errors import RateLimitedError, describe
from fedge.errors import FedgeError

__all__ = ["error_response", "register_error_handlers"]

logger = logging.getLogger(__name__)


def error_response(status: int, code: str, detail: str) -> Response:
    response = jsonify({"error": code, "detail": detail})
    response.status_code = status
    return response


def _fedge_error(exc: FedgeError) -> Response:
    status, code = describe(exc)
    response = error_response(status, code, str(exc))
    if isinstance(exc, RateLimitedError):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _http_error(exc: HTTPException) -> Response:
    code = (exc.name or "error").lower().replace(" ", "_")
    response = error_response(exc.code or 500, code, exc.description or code)
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def _unexpected(exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal_error", "internal server error")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(FedgeError, _fedge_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
