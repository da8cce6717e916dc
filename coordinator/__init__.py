"""The cloud coordinator: rounds, clients, model registry, persistence, REST and gRPC.

The public names below are imported on first use (PEP 562), so ``import coordinator``
costs nothing until a name is used, and a process that needs only a few of them (an
in-memory simulation) never imports the rest.
"""

import typing as _typing

from fedge.lazy import lazy_exports as _lazy_exports

if _typing.TYPE_CHECKING:
    from coordinator.artifacts import ArtifactStore
    from coordinator.config import AlertConfig, RoundConfig, ServiceConfig
    from coordinator.errors import (
        AuthenticationError,
        ConflictError,
        CoordinatorError,
        CoordinatorUnavailableError,
        NotFoundError,
        PayloadTooLargeError,
        PermissionDeniedError,
        UnsupportedMediaTypeError,
        UpdateRejectedError,
    )
    from coordinator.intake import UpdateReceipt, UpdateSubmission
    from coordinator.secagg import SecAggReceipt, SecAggStageError
    from coordinator.selection import ClientSelector, RandomSelector
    from coordinator.service import CoordinatorService, Registration
    from coordinator.sqlite_store import SQLiteStore
    from coordinator.store import MemoryStore, Store, open_store

# Each public name and the module that defines it.
_SOURCES = {
    "AlertConfig": "coordinator.config",
    "ArtifactStore": "coordinator.artifacts",
    "AuthenticationError": "coordinator.errors",
    "ClientSelector": "coordinator.selection",
    "ConflictError": "coordinator.errors",
    "CoordinatorError": "coordinator.errors",
    "CoordinatorService": "coordinator.service",
    "CoordinatorUnavailableError": "coordinator.errors",
    "MemoryStore": "coordinator.store",
    "NotFoundError": "coordinator.errors",
    "PayloadTooLargeError": "coordinator.errors",
    "PermissionDeniedError": "coordinator.errors",
    "RandomSelector": "coordinator.selection",
    "Registration": "coordinator.service",
    "RoundConfig": "coordinator.config",
    "SQLiteStore": "coordinator.sqlite_store",
    "SecAggReceipt": "coordinator.secagg",
    "SecAggStageError": "coordinator.secagg",
    "ServiceConfig": "coordinator.config",
    "Store": "coordinator.store",
    "UnsupportedMediaTypeError": "coordinator.errors",
    "UpdateReceipt": "coordinator.intake",
    "UpdateRejectedError": "coordinator.errors",
    "UpdateSubmission": "coordinator.intake",
    "open_store": "coordinator.store",
}

__all__ = [
    "AlertConfig",
    "ArtifactStore",
    "AuthenticationError",
    "ClientSelector",
    "ConflictError",
    "CoordinatorError",
    "CoordinatorService",
    "CoordinatorUnavailableError",
    "MemoryStore",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RandomSelector",
    "Registration",
    "RoundConfig",
    "SQLiteStore",
    "SecAggReceipt",
    "SecAggStageError",
    "ServiceConfig",
    "Store",
    "UnsupportedMediaTypeError",
    "UpdateReceipt",
    "UpdateRejectedError",
    "UpdateSubmission",
    "open_store",
]


__getattr__, __dir__ = _lazy_exports(__name__, globals(), _SOURCES)
