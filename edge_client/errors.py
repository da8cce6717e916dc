"""The errors the edge client adds to :mod:`fedge.errors`.

::

    FedgeError (fedge.errors)
    └── EdgeError                 the device side cannot do what was asked
        ├── TransportError        the coordinator was not reached, or answered 5xx/429:
        │                         retry later with backoff (``retry_after`` when it said)
        └── RequestRejected       the coordinator refused a request (4xx): ``status`` and
                                  its machine-readable ``code`` (``round_closed``...)

Bundle problems (a download whose sha256 or size differs from the manifest) stay
:class:`~fedge.errors.BundleError`; bad local data stays :class:`~fedge.errors.DataError`.
Third-party errors (``requests``, ``OSError`` of a socket) are translated in
:mod:`edge_client.transport` only, with ``raise ... from exc``.
"""

from __future__ import annotations

from fedge.errors import FedgeError

__all__ = ["EdgeError", "RequestRejected", "TransportError"]


class EdgeError(FedgeError):
    """Root of the edge client's own errors."""


class TransportError(EdgeError):
    """The coordinator could not be reached or is temporarily unable to answer."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestRejected(EdgeError):
    """The coordinator answered a 4xx: retrying the same request will not help."""

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
