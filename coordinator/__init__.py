"""The cloud coordinator: rounds, clients, model registry, persistence, REST and gRPC."""

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
