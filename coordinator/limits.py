"""Limits of the HTTP server that hold a fleet: how many connections it keeps, how long it
waits for each request, how large a body each kind of route takes and how fast devices may
register. Plain values, so
the CLI can show the defaults without importing the server."""

from __future__ import annotations

from dataclasses import dataclass

from fedge.errors import ConfigError
from fedge.validation import check_int, check_positive

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_REPORT_BYTES",
    "MIN_FREE_BYTES",
    "ConnectionLimits",
    "GrpcLimits",
    "RateLimit",
]

MAX_JSON_BYTES = 64 << 10
"""The body limit of a JSON route (registration and the admin's routes)."""
MAX_REPORT_BYTES = 4 << 20
"""The body limit of a device report (stats, evaluations, features)."""
MIN_FREE_BYTES = 256 << 20
"""``/healthz`` fails below this much free space in the artifact directory: room for a few
model versions and the uploads of a round."""


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections the server holds and how long it waits for each.

    The defaults hold a fleet: 500 slow sockets leave room for a new request, which is
    answered at once; a slow socket is closed ``header_timeout`` s after its request began.
    """

    connection_limit: int = 2000
    header_timeout: float = 10.0
    body_timeout: float = 300.0
    idle_timeout: float = 60.0
    backlog: int = 2048

    def __post_init__(self) -> None:
        check_int(self.connection_limit, "connection_limit", low=1)
        check_int(self.backlog, "backlog", low=1)
        for name in ("header_timeout", "body_timeout", "idle_timeout"):
            check_positive(getattr(self, name), name)


@dataclass(frozen=True)
class RateLimit:
    """Registrations: ``per_address`` a second in bursts of ``per_address_burst`` from one
    source address, ``total`` a second in bursts of ``total_burst`` overall."""

    per_address: float = 2.0
    per_address_burst: int = 20
    total: float = 50.0
    total_burst: int = 500
    max_addresses: int = 100_000

    def __post_init__(self) -> None:
        check_positive(self.per_address, "per_address")
        check_positive(self.total, "total")
        check_int(self.per_address_burst, "per_address_burst", low=1)
        check_int(self.total_burst, "total_burst", low=1)
        check_int(self.max_addresses, "max_addresses", low=1)


@dataclass(frozen=True)
class GrpcLimits:
    """The gRPC server's limits (:mod:`coordinator.rpc.server`).

    Messages: at most ``max_receive_message_bytes`` in and ``max_send_message_bytes`` out
    (model files and updates stream in ``chunk_bytes`` chunks, so neither bounds a file).
    An upload stream must end within ``stream_seconds`` (REST's body timeout) and send each
    message within ``chunk_seconds`` of the one before, or it is refused DEADLINE_EXCEEDED
    and its handler freed. An upload holds a worker while it streams, so at most
    ``max_uploads`` run at once (fewer than ``workers``: the rest stay free for polls and
    downloads) and at most ``max_uploads_per_client`` for one client; one more is refused
    RESOURCE_EXHAUSTED with a retry-after. ``workers`` threads run the calls,
    each connection holds at most ``max_concurrent_streams`` calls at once. Keepalive: the
    server pings an idle connection every ``keepalive_seconds`` and drops it when no answer
    comes within ``keepalive_timeout_seconds``; clients may ping every
    ``min_ping_interval_seconds``; a connection without calls for
    ``max_connection_idle_seconds`` is closed. The defaults hold 1,000 devices polling and
    100 concurrent uploads (calls beyond ``workers`` wait for a thread).
    """

    max_receive_message_bytes: int = 8 << 20
    max_send_message_bytes: int = 8 << 20
    chunk_bytes: int = 1 << 20
    stream_seconds: float = 300.0
    chunk_seconds: float = 30.0
    max_uploads: int = 16
    max_uploads_per_client: int = 2
    max_concurrent_streams: int = 256
    keepalive_seconds: float = 30.0
    keepalive_timeout_seconds: float = 10.0
    min_ping_interval_seconds: float = 10.0
    max_connection_idle_seconds: float = 300.0
    workers: int = 32

    def __post_init__(self) -> None:
        for name in (
            "max_receive_message_bytes",
            "max_send_message_bytes",
            "max_concurrent_streams",
            "workers",
            "max_uploads",
            "max_uploads_per_client",
        ):
            check_int(getattr(self, name), name, low=1)
        check_int(self.chunk_bytes, "chunk_bytes", low=1)
        for name in (
            "stream_seconds",
            "chunk_seconds",
            "keepalive_seconds",
            "keepalive_timeout_seconds",
            "min_ping_interval_seconds",
            "max_connection_idle_seconds",
        ):
            check_positive(getattr(self, name), name)
        if self.max_uploads >= self.workers:
            raise ConfigError(
                f"max_uploads ({self.max_uploads}) must be below workers ({self.workers}): "
                "uploads hold a worker while they stream, and other calls need one too"
            )
        if self.chunk_bytes + 1024 > self.max_send_message_bytes:
            raise ConfigError(
                f"chunk_bytes ({self.chunk_bytes}) must leave 1 KiB under "
                f"max_send_message_bytes ({self.max_send_message_bytes})"
            )
