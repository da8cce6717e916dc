"""Limits of the HTTP server that hold a fleet: how many connections it keeps, how long it
waits for each request, how large a body each kind of route takes and how fast devices may
register. Plain values, so
the CLI can show the defaults without importing the server."""

from __future__ import annotations

from dataclasses import dataclass

from fedge.validation import check_int, check_positive

__all__ = ["MAX_JSON_BYTES", "MAX_REPORT_BYTES", "MIN_FREE_BYTES", "ConnectionLimits", "RateLimit"]

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
