"""What an app of the REST adapter holds: its service and configuration, stored in
``app.extensions["fedge"]`` by :func:`coordinator.rest.create_app` (no module-level state)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from flask import Flask, current_app

from coordinator.limits import MAX_JSON_BYTES, MAX_REPORT_BYTES, MIN_FREE_BYTES, RateLimit
from coordinator.rest.ratelimit import RegistrationLimiter
from coordinator.service import CoordinatorService
from fedge.validation import check_int

__all__ = ["EXTENSION", "ApiConfig", "RestState", "current_state", "install_state"]

EXTENSION = "fedge"
"""The key of :class:`RestState` in ``app.extensions``."""


@dataclass(frozen=True)
class ApiConfig:
    """Secrets (as sha256 hashes only) and limits of the HTTP API.

    ``admin_token_hash`` None disables admin endpoints; ``enrollment_token_hash`` None
    leaves registration open. ``max_content_length`` defaults to the service's
    ``max_update_bytes`` (the update upload's limit); ``max_json_bytes`` bounds every other
    body but the device reports', which ``max_report_bytes`` bounds. ``/healthz`` fails when
    the artifact directory has less than ``min_free_bytes`` free. ``registration_limit``
    rate-limits registrations (None: unlimited, for apps that only tests reach).
    """

    admin_token_hash: str | None = None
    enrollment_token_hash: str | None = None
    max_content_length: int | None = None
    max_json_bytes: int = MAX_JSON_BYTES
    max_report_bytes: int = MAX_REPORT_BYTES
    min_free_bytes: int = MIN_FREE_BYTES
    registration_limit: RateLimit | None = None

    def __post_init__(self) -> None:
        check_int(self.max_json_bytes, "max_json_bytes", low=1)
        check_int(self.max_report_bytes, "max_report_bytes", low=1)
        check_int(self.min_free_bytes, "min_free_bytes", low=0)


@dataclass(frozen=True)
class RestState:
    """The service an app serves, the configuration it serves it with, and its
    registration rate limiter."""

    service: CoordinatorService
    config: ApiConfig
    registrations: RegistrationLimiter | None = None


def install_state(app: Flask, service: CoordinatorService, config: ApiConfig) -> None:
    limit = config.registration_limit
    limiter = RegistrationLimiter(limit) if limit is not None else None
    app.extensions[EXTENSION] = RestState(service, config, limiter)


def current_state() -> RestState:
    """The :class:`RestState` of the app handling the current request."""
    return cast(RestState, current_app.extensions[EXTENSION])
