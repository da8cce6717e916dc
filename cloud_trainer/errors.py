"""The errors the cloud trainer raises, under :class:`fedge.errors.FedgeError`.

::

    FedgeError
    ├── ClusterError      a process of a local multi-worker or parameter-server cluster
    │                     failed, or the cluster ran past its deadline (the others were
    │                     stopped)
    └── TrainingError     training ran but failed (TensorFlow error, non-finite loss)

Bad arguments and data raise the core's ``ConfigError`` and ``DataError``.
"""

from __future__ import annotations

from fedge.errors import FedgeError

__all__ = ["ClusterError", "TrainingError"]


class ClusterError(FedgeError, RuntimeError):
    """A worker of a local cluster failed, or the cluster ran past its deadline."""


class TrainingError(FedgeError, RuntimeError):
    """Training ran but failed (TensorFlow error, non-finite loss)."""
