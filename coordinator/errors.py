"""The coordinator's errors, and the ONE mapping from any FedgeError to (status, code).

::

    FedgeError (fedge.errors)
    └── CoordinatorError           400  a request the service cannot act on
        ├── AuthenticationError    401  token missing, malformed or unknown
        ├── PermissionDeniedError  403  authenticated, but not allowed (admin only, not assigned)
        ├── NotFoundError          404  no such round, model, task, file or artifact
        ├── ConflictError          409  the state forbids it (round closed, duplicate update,
        │                               idempotency key reused with another payload)
        ├── PayloadTooLargeError   413  a body over the configured limit
        ├── UnsupportedMediaTypeError 415  a body of the wrong content type
        ├── UpdateRejectedError    422  an update that fails a server policy (norm bound,
        │                               example count)
        ├── RateLimitedError       429  too many registrations from an address or overall
        ├── CoordinatorUnavailableError 503  (client side) the coordinator cannot be
        │                               reached, or answered with a server error
        └── StateError             503  the state database cannot be read (not SQLite,
                                        corrupt pages): the service cannot start on it

Each error carries a short machine-readable ``code`` (``"norm_exceeded"``,
``"round_closed"``...) that transports return as ``{"error": code, "detail": message}``
and that the rejection metrics count by. Core errors (weights, messages, bundles,
statistics) are mapped by :func:`describe` too, so every transport uses one table.
"""

from __future__ import annotations

from typing import ClassVar

from fedge.errors import (
    AggregationError,
    BundleError,
    ConfigError,
    DtypeMismatchError,
    FeatureError,
    FedgeError,
    MissingTensorError,
    NonFiniteError,
    ProtocolError,
    ShapeMismatchError,
    UnknownTensorError,
    WeightsError,
    WeightsFormatError,
)

__all__ = [
    "AuthenticationError",
    "ConflictError",
    "CoordinatorError",
    "CoordinatorUnavailableError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitedError",
    "StateError",
    "UnsupportedMediaTypeError",
    "UpdateRejectedError",
    "describe",
]


class CoordinatorError(FedgeError):
    """A request the coordinator cannot act on; ``code`` says which check failed."""

    status: ClassVar[int] = 400
    default_code: ClassVar[str] = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or self.default_code


class AuthenticationError(CoordinatorError):
    status = 401
    default_code = "unauthorized"


class PermissionDeniedError(CoordinatorError):
    status = 403
    default_code = "forbidden"


class NotFoundError(CoordinatorError):
    status = 404
    default_code = "not_found"


class ConflictError(CoordinatorError):
    status = 409
    default_code = "conflict"


class PayloadTooLargeError(CoordinatorError):
    status = 413
    default_code = "payload_too_large"


class UnsupportedMediaTypeError(CoordinatorError):
    status = 415
    default_code = "unsupported_media_type"


class UpdateRejectedError(CoordinatorError):
    status = 422
    default_code = "update_rejected"


class RateLimitedError(CoordinatorError):
    """Too many requests of a kind (registrations); ``retry_after``: seconds to wait."""

    status = 429
    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class CoordinatorUnavailableError(CoordinatorError):
    """Raised by clients of the coordinator (:mod:`coordinator.client`): it cannot be
    reached, or it answered with a server error (5xx)."""

    status = 503
    default_code = "unavailable"


class StateError(CoordinatorError):
    """The state store cannot be opened or read: a file that is not a SQLite database, or
    one whose pages fail SQLite's integrity check."""

    status = 503
    default_code = "state_unreadable"


# Most specific first: the first class the error is an instance of decides.
_CORE: tuple[tuple[type[FedgeError], int, str], ...] = (
    (WeightsFormatError, 400, "malformed_weights"),
    (UnknownTensorError, 422, "unknown_tensor"),
    (MissingTensorError, 422, "missing_tensor"),
    (ShapeMismatchError, 422, "shape_mismatch"),
    (DtypeMismatchError, 422, "dtype_mismatch"),
    (NonFiniteError, 422, "non_finite"),
    (WeightsError, 422, "invalid_weights"),
    (ProtocolError, 400, "bad_message"),
    (BundleError, 400, "bad_bundle"),
    (FeatureError, 422, "invalid_statistics"),
    (ConfigError, 400, "invalid_config"),
    (AggregationError, 422, "aggregation_failed"),
)


def describe(error: FedgeError) -> tuple[int, str]:
    """The HTTP-style status and the machine-readable code of ``error``."""
    if isinstance(error, CoordinatorError):
        return error.status, error.code
    for cls, status, code in _CORE:
        if isinstance(error, cls):
            return status, code
    return 400, "bad_request"
