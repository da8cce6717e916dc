"""The errors the edge client adds to :mod:`fedge.errors`.

::

    FedgeError (fedge.errors)
    └── EdgeError                 the device side cannot do what was asked
        ├── TransportError        the coordinator was not reached, answered 5xx/429, or
        │   │                     sent no complete response within the request's deadline:
        │   │                     retry later with backoff (``retry_after`` when it said)
        │   └── RequestCancelled  the daemon is stopping: the request in flight was
        │                         aborted (a queued reply stays queued)
        ├── RequestRejected       the coordinator refused a request (4xx): ``status`` and
        │                         its machine-readable ``code`` (``round_closed``...)
        └── PolicyRefusal         the device's own privacy policy refuses to answer a
                                  task (too few rows, a kind it does not answer, too soon
                                  after the last answer, epsilon budget spent): ``reason``

    BaseException
    └── DaemonStopped             not an error: raised by the daemon's SIGTERM/SIGINT
                                  handler inside on-device work (training, evaluation) so
                                  that it ends between two interpreter calls

Bundle problems (a download whose sha256 or size differs from the manifest) stay
:class:`~fedge.errors.BundleError` (:class:`ModelRejected` when a download was refused: it
names the version and the manifest's sha256, which the daemon remembers so that it does
not download that version again); bad local data stays :class:`~fedge.errors.DataError`.
Third-party errors (``requests``, ``OSError`` of a socket) are translated in
:mod:`edge_client.transport` only, with ``raise ... from exc``.
"""

from __future__ import annotations

from fedge.errors import BundleError, FedgeError

__all__ = [
    "DaemonStopped",
    "EdgeError",
    "ModelRejected",
    "PolicyRefusal",
    "RequestCancelled",
    "RequestRejected",
    "TransportError",
]


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


class PolicyRefusal(EdgeError):
    """The device's policy (:mod:`edge_client.policy`) refuses the task; ``reason`` is a
    short machine-readable word (``min_rows``, ``task_kind``, ``interval``, ``budget``,
    ``min_class_rows``). ``epsilon``/``delta`` are what was spent before the refusal (noise
    already drawn, as when no prototype class survives its noisy threshold)."""

    def __init__(
        self, message: str, *, reason: str, epsilon: float = 0.0, delta: float = 0.0
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.epsilon = epsilon
        self.delta = delta


class RequestCancelled(TransportError):
    """The request was aborted because the daemon is stopping."""


class ModelRejected(BundleError):
    """A downloaded model version failed verification: ``version`` and the sha256 of the
    manifest that arrived (None when the manifest itself was refused)."""

    def __init__(
        self,
        message: str,
        *,
        version: str,
        manifest_sha256: str | None = None,
        file: str | None = None,
    ) -> None:
        super().__init__(message, file=file)
        self.version = version
        self.manifest_sha256 = manifest_sha256


class DaemonStopped(BaseException):
    """A stop signal interrupted on-device work. A BaseException (like KeyboardInterrupt),
    so that no ``except Exception`` in the work swallows it."""
