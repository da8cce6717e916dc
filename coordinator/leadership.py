"""Which coordinator replica runs the round ticks.

Several ``fedge-coordinator serve`` processes on one PostgreSQL database serve the same
fleet; every one of them answers REST and gRPC, but only the one that holds the leader lock
advances rounds (:meth:`CoordinatorService.tick`: deadlines, closing, aggregating,
committing, opening the next round). The lock is PostgreSQL's session-level advisory lock
:data:`LEADER_LOCK_KEY`, held on a connection of its own (not one of the store's pool):

- :meth:`PostgresLeadership.refresh`, called by the ticker before every tick, takes the
  lock when nobody holds it (``pg_try_advisory_lock``, never waiting) and, while it holds
  it, checks that its connection still answers; a connection that fails gives up the
  leadership at once and the next refresh reconnects and tries again.
- A replica that dies (SIGKILL included) loses its connection, and the server releases the
  lock with it; the next refresh of any other replica (every ``--tick-seconds``) takes it.
  A host that vanishes without closing its sockets is noticed by TCP keepalives, which
  the lock's connection turns on at both ends (the client's ``keepalives_*`` and the
  server's ``tcp_keepalives_*``), so takeover stays bounded then too (about 11 s).

On SQLite or the in-memory store (one process per database) :class:`SoleLeadership` always
leads. Everything a round transition writes happens under the store's write lock and
re-checks the round's state, so even two replicas that both believed they led for a moment
could not commit one round twice.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

__all__ = [
    "LEADER_LOCK_KEY",
    "Leadership",
    "PostgresLeadership",
    "SoleLeadership",
    "leadership_for",
]

logger = logging.getLogger(__name__)

# The session advisory lock of the ticking replica (a bigint; "fedge-ld" in ASCII), a
# different key from the store's write lock.
LEADER_LOCK_KEY = 0x6665_6467_652D_6C64

_KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


# The server's side of the same: it ends the session (releasing the lock) of a replica whose
# host stopped answering after about 5 + 2 * 3 = 11 s.
_SERVER_KEEPALIVES = {
    "tcp_keepalives_idle": 5,
    "tcp_keepalives_interval": 2,
    "tcp_keepalives_count": 3,
}


class Leadership(Protocol):
    """Whether this process runs the round ticks."""

    def refresh(self) -> bool:
        """Take or confirm the leadership (the ticker calls it before each tick)."""

    def held(self) -> bool:
        """The last refresh's answer (cheap: no I/O)."""

    def close(self) -> None:
        """Give the leadership up."""


class SoleLeadership:
    """One process per database: it always leads."""

    def refresh(self) -> bool:
        return True

    def held(self) -> bool:
        return True

    def close(self) -> None:
        return None


class PostgresLeadership:
    """The session advisory lock :data:`LEADER_LOCK_KEY` on a dedicated connection to
    ``url`` (see the module docstring)."""

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0) -> None:
        self._url = url
        self._connect_timeout = max(1, int(connect_timeout_s))
        self._conn: Any = None
        self._held = False
        self._lock = threading.Lock()

    def held(self) -> bool:
        return self._held

    def refresh(self) -> bool:
        import psycopg

        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(
                        self._url,
                        autocommit=True,
                        connect_timeout=self._connect_timeout,
                        application_name="fedge-coordinator-leader",
                        **_KEEPALIVES,
                    )
                    for name, value in _SERVER_KEEPALIVES.items():  # ignored on Unix sockets
                        self._conn.execute(f"SET {name} = {int(value)}".encode())
                    self._held = False
                if self._held:
                    self._conn.execute("SELECT 1")
                else:
                    row = self._conn.execute(
                        "SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,)
                    ).fetchone()
                    self._held = bool(row and row[0])
                    if self._held:
                        logger.info("this replica now runs the round ticks (leader lock taken)")
            except psycopg.Error as exc:
                if self._held:
                    logger.warning("lost the leader lock's connection: %s", str(exc).strip())
                self._drop()
        return self._held

    def _drop(self) -> None:
        self._held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing left to release
                logger.debug("closing the leader lock's connection failed", exc_info=True)

    def close(self) -> None:
        """Release the lock (closing its connection) so another replica takes over now."""
        with self._lock:
            self._drop()


def leadership_for(store: object) -> Leadership:
    """The leadership rule for ``store``: the advisory lock on PostgreSQL, else sole."""
    try:
        from coordinator.postgres_store import PostgresStore
    except ImportError:  # no psycopg: no PostgreSQL store either
        return SoleLeadership()
    if isinstance(store, PostgresStore):
        return PostgresLeadership(store.url)
    return SoleLeadership()
