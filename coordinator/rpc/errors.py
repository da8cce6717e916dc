"""The one place where exceptions become gRPC statuses.

A :class:`~fedge.errors.FedgeError` takes the status and code of
:func:`coordinator.errors.describe` (as a REST answer would), mapped to a gRPC code:

======================  =====================
HTTP status             gRPC code
======================  =====================
400, 415, 422           INVALID_ARGUMENT
401                     UNAUTHENTICATED
403                     PERMISSION_DENIED
404, 410                NOT_FOUND
408                     DEADLINE_EXCEEDED
409                     FAILED_PRECONDITION
413, 429                RESOURCE_EXHAUSTED
503                     UNAVAILABLE
anything else           INTERNAL
======================  =====================

The status details are the REST ``detail``; the trailing metadata carries
``fedge-error`` (the REST code), ``fedge-status`` (the REST status) and, when the caller
should wait (rate limits, a secure-aggregation stage not reached yet), ``retry-after`` in
seconds. A refusal is logged (INFO: the handler, the gRPC code and the REST code, as the
REST access log shows a refused request). Any other exception is logged with its traceback
and answered INTERNAL
``internal_error`` without details. Every handler of both services is wrapped by
:func:`unary_errors` or :func:`stream_errors`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import grpc

from coordinator.errors import CoordinatorError, describe
from fedge.errors import FedgeError

__all__ = [
    "ERROR_KEY",
    "RETRY_AFTER_KEY",
    "STATUS_KEY",
    "RpcFailure",
    "StreamTimeoutError",
    "abort",
    "grpc_code",
    "metadata_value",
    "rpc_failure",
    "stream_errors",
    "unary_errors",
]

logger = logging.getLogger(__name__)

ERROR_KEY = "fedge-error"
STATUS_KEY = "fedge-status"
RETRY_AFTER_KEY = "retry-after"

_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    410: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


class StreamTimeoutError(CoordinatorError):
    """A client stream that did not end within its time limit (REST: the body timeout)."""

    status = 408
    default_code = "stream_timeout"


@dataclass(frozen=True)
class RpcFailure:
    """How a refused call ends: its gRPC code, details and trailing metadata."""

    code: grpc.StatusCode
    error: str
    status: int
    detail: str
    retry_after: int | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        pairs = [(ERROR_KEY, self.error), (STATUS_KEY, str(self.status))]
        if self.retry_after is not None:
            pairs.append((RETRY_AFTER_KEY, str(self.retry_after)))
        return tuple(pairs)


def grpc_code(status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP-style ``status``."""
    return _CODES.get(status, grpc.StatusCode.INTERNAL)


def rpc_failure(exc: FedgeError) -> RpcFailure:
    """The status a fedge error ends a call with (see the module's table)."""
    status, code = describe(exc)
    retry_after = getattr(exc, "retry_after", None)
    return RpcFailure(
        code=grpc_code(status),
        error=code,
        status=status,
        detail=str(exc),
        retry_after=int(retry_after) if isinstance(retry_after, int | float) else None,
    )


_INTERNAL = RpcFailure(grpc.StatusCode.INTERNAL, "internal_error", 500, "internal server error")


def abort(context: grpc.ServicerContext, failure: RpcFailure) -> NoReturn:
    """End the call with ``failure`` (raises, as :meth:`grpc.ServicerContext.abort` does)."""
    context.set_trailing_metadata(failure.metadata())
    context.abort(failure.code, failure.detail)
    raise AssertionError("unreachable: grpc's abort raises")  # pragma: no cover


def _failure(exc: Exception, name: str) -> RpcFailure:
    if isinstance(exc, FedgeError):
        failure = rpc_failure(exc)
        logger.info("gRPC %s -> %s %s", name, failure.code.name, failure.error)
        return failure
    logger.exception("unhandled error in %s", name)
    return _INTERNAL


_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def unary_errors(
    handler: Callable[[_Request, grpc.ServicerContext], _Response],
) -> Callable[[_Request, grpc.ServicerContext], _Response]:
    """Wrap a handler that returns one answer (unary or client-streaming)."""

    @functools.wraps(handler)
    def wrapped(request: _Request, context: grpc.ServicerContext) -> _Response:
        try:
            return handler(request, context)
        except Exception as exc:  # every error ends the call with a status here
            failure = _failure(exc, handler.__name__)
        abort(context, failure)

    return wrapped


def stream_errors(
    handler: Callable[[_Request, grpc.ServicerContext], Iterator[_Response]],
) -> Callable[[_Request, grpc.ServicerContext], Iterator[_Response]]:
    """Wrap a handler that yields its answers (server-streaming)."""

    @functools.wraps(handler)
    def wrapped(request: _Request, context: grpc.ServicerContext) -> Iterator[_Response]:
        try:
            yield from handler(request, context)
            return
        except Exception as exc:  # every error ends the call with a status here
            failure = _failure(exc, handler.__name__)
        abort(context, failure)

    return wrapped


def metadata_value(context: grpc.ServicerContext, key: str) -> str | None:
    """The value of invocation metadata ``key`` (lowercase), or None."""
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return value if isinstance(value, str) else None
    return None
