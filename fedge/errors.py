"""The errors fedge raises, as one tree rooted at :class:`FedgeError`.

::

    FedgeError
    ├── ConfigError              an argument or configuration value is invalid
    ├── UsageError               a command line that cannot work (a CLI's exit code 2)
    ├── WeightsError             a set of weights is unusable
    │   ├── WeightsFormatError       bytes that are not a valid weights file (truncated, corrupt)
    │   ├── UnknownTensorError       a tensor the reference does not have
    │   ├── MissingTensorError       a tensor the reference has is absent
    │   ├── ShapeMismatchError       a tensor whose shape differs from the reference
    │   ├── DtypeMismatchError       a tensor whose dtype differs from the reference
    │   └── NonFiniteError           a tensor holding NaN or +-Inf
    ├── AggregationError         an aggregator cannot produce a result (no updates, bad weight)
    ├── DataError                a data set cannot be read or partitioned as asked
    ├── FeatureError             statistics or a feature spec do not fit the data given
    ├── ProtocolError            a message (task or reply) is malformed or out of bounds
    ├── JSONLimitError           a JSON document over a size or nesting-depth limit
    ├── BundleError              an edge bundle is unusable (bad manifest, file missing,
    │                            size or sha256 mismatch, unsafe file name)
    ├── SecAggError              a secure-aggregation step cannot proceed: too few shares,
    │                            inconsistent or tampered shares, a request an honest
    │                            client refuses (:mod:`fedge.secagg`)
    └── ProcessError             a child process failed, exited too early or overran its
                                 deadline (:mod:`fedge.processes`)

Transports map these to status codes in one place; library code never calls ``sys.exit``.
"""

from __future__ import annotations

__all__ = [
    "AggregationError",
    "BundleError",
    "ConfigError",
    "DataError",
    "DtypeMismatchError",
    "FeatureError",
    "FedgeError",
    "JSONLimitError",
    "MissingTensorError",
    "NonFiniteError",
    "ProcessError",
    "ProtocolError",
    "SecAggError",
    "ShapeMismatchError",
    "SignatureError",
    "UnknownTensorError",
    "UsageError",
    "WeightsError",
    "WeightsFormatError",
]


class FedgeError(Exception):
    """Root of every error fedge raises on purpose."""


class ConfigError(FedgeError, ValueError):
    """An argument or configuration value is invalid."""


class UsageError(FedgeError, ValueError):
    """A command line that cannot work: a bad flag, a missing or unusable input path.

    Raised by the command-line layer only (:mod:`fedge.cli`); library code raises the
    specific error of what it checked and never names a flag.
    """


class WeightsError(FedgeError, ValueError):
    """A set of weights is unusable. ``tensor`` names the offending tensor when there is one."""

    def __init__(self, message: str, *, tensor: str | None = None) -> None:
        super().__init__(message)
        self.tensor = tensor


class WeightsFormatError(WeightsError):
    """Bytes that do not decode to a weights file (truncated, corrupt, wrong format)."""


class UnknownTensorError(WeightsError):
    """A tensor name the reference weights do not have."""


class MissingTensorError(WeightsError):
    """A tensor the reference weights have is absent."""


class ShapeMismatchError(WeightsError):
    """A tensor whose shape differs from the reference."""


class DtypeMismatchError(WeightsError):
    """A tensor whose dtype differs from the reference."""


class NonFiniteError(WeightsError):
    """A tensor holding NaN or infinite values."""


class AggregationError(FedgeError, ValueError):
    """An aggregator cannot produce a result (no updates, invalid weight, bad options)."""


class DataError(FedgeError, ValueError):
    """A data set cannot be read or partitioned as asked."""


class FeatureError(FedgeError, ValueError):
    """Statistics or a feature spec do not fit the data they are applied to."""


class ProtocolError(FedgeError, ValueError):
    """A message is malformed or out of bounds. ``field`` names the offending field if known."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class JSONLimitError(FedgeError, ValueError):
    """A JSON document over a size or nesting-depth limit (see :mod:`fedge.jsonlimits`)."""


class BundleError(FedgeError, ValueError):
    """An edge bundle is unusable: bad manifest, missing file, size or digest mismatch.

    ``file`` names the offending file when there is one.
    """

    def __init__(self, message: str, *, file: str | None = None) -> None:
        super().__init__(message)
        self.file = file


class SignatureError(BundleError):
    """A manifest's signature is missing, malformed, from an untrusted key or does not
    verify; or a key rotation statement does not verify (see :mod:`fedge.signing`)."""


class SecAggError(FedgeError, ValueError):
    """A secure-aggregation step cannot proceed: fewer shares than the threshold,
    inconsistent or tampered shares, or a request an honest client refuses."""


class ProcessError(FedgeError, RuntimeError):
    """A child process failed, exited before it was ready, or overran its deadline.

    ``name`` is the child's name and ``returncode`` its exit status (``None``: still
    running when the deadline passed; < 0: killed by that signal).
    """

    def __init__(self, message: str, *, name: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.returncode = returncode
