"""The scale-out store: the Store Protocol on a PostgreSQL server, through psycopg 3.

``--db postgresql://USER:PASSWORD@HOST:PORT/DBNAME`` (or ``postgres://``; any libpq URL,
e.g. ``postgresql://postgres@/fedge?host=/run/postgresql`` for a Unix socket) opens it.
Each record is a JSON document (``doc``, text, so it comes back exactly as it was written)
beside the columns the queries need, as in the SQLite store.

Connections come from a :class:`psycopg_pool.ConnectionPool` (``min_size`` to
``max_size`` per process). A ``with store.transaction():`` block holds one pooled connection
for the thread that entered it; the calls inside, and nested blocks, run on it.

Writers are serialised the way SQLite's single writer serialises them: every write
transaction starts by taking the transaction-level advisory lock :data:`WRITE_LOCK_KEY`
(``pg_advisory_xact_lock``), so a read-check-write group inside ``transaction()`` sees no
other writer between its read and its write, whichever process that writer runs in, and
ids assigned here (rounds, model events, reports, alerts) stay 1, 2, ... without gaps.
Reads outside a transaction take no lock and see committed data. Unique constraints
(client id and token hash, one update per round and client, one idempotency key per client,
one secure-aggregation message per round, stage and client) make duplicates a
:class:`~coordinator.errors.ConflictError`; a failed insert inside a transaction is undone
alone (a savepoint), so the transaction around it goes on, as with SQLite.

Schema changes are the SQLite store's numbered migrations, recorded in
``schema_migrations`` and applied under the same lock, so processes opening one database at
the same time migrate it once.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from coordinator.errors import ConflictError, NotFoundError, StateError
from coordinator.records import (
    AlertRecord,
    ClientRecord,
    EnrollmentTokenRecord,
    ModelEvent,
    ModelRecord,
    RejectionRecord,
    ReportRecord,
    RoundRecord,
    SecAggRecord,
    TaskRecord,
    UpdateRecord,
)

__all__ = ["MIGRATIONS", "WRITE_LOCK_KEY", "PostgresStore"]

logger = logging.getLogger(__name__)
R = TypeVar("R", bound=Any)

# The advisory lock every write transaction holds (a bigint; "fedge-st" in ASCII).
WRITE_LOCK_KEY = 0x6665_6467_652D_7374

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE clients (seq BIGSERIAL NOT NULL UNIQUE, client_id TEXT PRIMARY KEY,
                              token_hash TEXT NOT NULL UNIQUE, doc TEXT NOT NULL);
        CREATE TABLE rounds (round_id BIGINT PRIMARY KEY, state TEXT NOT NULL,
                             doc TEXT NOT NULL);
        CREATE TABLE tasks (seq BIGSERIAL PRIMARY KEY, task_id TEXT NOT NULL UNIQUE,
                            client_id TEXT NOT NULL, round_id BIGINT, status TEXT NOT NULL,
                            doc TEXT NOT NULL);
        CREATE INDEX tasks_by_client ON tasks (client_id, status);
        CREATE TABLE updates (seq BIGSERIAL PRIMARY KEY,
                              round_id BIGINT NOT NULL, client_id TEXT NOT NULL,
                              idempotency_key TEXT NOT NULL, doc TEXT NOT NULL,
                              UNIQUE (round_id, client_id), UNIQUE (client_id, idempotency_key));
        CREATE TABLE rejections (seq BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION NOT NULL,
                                 reason TEXT NOT NULL, doc TEXT NOT NULL);
        CREATE INDEX rejections_by_time ON rejections (at);
        CREATE TABLE models (version TEXT PRIMARY KEY, seq BIGINT NOT NULL UNIQUE,
                             stage TEXT NOT NULL, doc TEXT NOT NULL);
        CREATE TABLE model_events (seq BIGINT PRIMARY KEY, version TEXT NOT NULL,
                                   doc TEXT NOT NULL);
        CREATE TABLE reports (report_id BIGINT PRIMARY KEY, kind TEXT NOT NULL,
                              model_version TEXT, doc TEXT NOT NULL);
        CREATE TABLE alerts (alert_id BIGINT PRIMARY KEY, kind TEXT NOT NULL,
                             created_at DOUBLE PRECISION NOT NULL, doc TEXT NOT NULL);
        """,
    ),
    (
        2,
        """
        CREATE INDEX tasks_by_round ON tasks (round_id, status);
        """,
    ),
    (
        3,
        """
        CREATE TABLE secagg_messages (seq BIGSERIAL PRIMARY KEY,
                                      round_id BIGINT NOT NULL, stage TEXT NOT NULL,
                                      client_id TEXT NOT NULL, doc TEXT NOT NULL,
                                      UNIQUE (round_id, stage, client_id));
        """,
    ),
    (
        4,
        """
        CREATE TABLE enrollment_tokens (seq BIGSERIAL PRIMARY KEY,
                                        token_id TEXT NOT NULL UNIQUE,
                                        token_hash TEXT NOT NULL UNIQUE, doc TEXT NOT NULL);
        """,
    ),
    (
        5,
        """
        ALTER TABLE updates ADD COLUMN quarantine TEXT;
        CREATE INDEX updates_by_quarantine ON updates (quarantine, client_id);
        """,
    ),
    (
        6,
        """
        CREATE TABLE client_presence (client_id TEXT PRIMARY KEY,
                                      seen_at DOUBLE PRECISION NOT NULL,
                                      transport TEXT NOT NULL);
        CREATE INDEX model_events_by_version ON model_events (version, seq);
        """,
    ),
)

Connection = psycopg.Connection[tuple[Any, ...]]


def _dump(record: Any) -> str:
    return json.dumps(record.to_dict(), sort_keys=True, allow_nan=False)


def _quarantine(update: UpdateRecord) -> str | None:
    """The ``updates.quarantine`` column: held, released, or NULL (never quarantined)."""
    if update.quarantine is None:
        return None
    return "held" if update.released_at is None else "released"


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", url)


class PostgresStore:
    """The Store Protocol on a PostgreSQL database (migrated on open)."""

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout_s: float = 10.0,
    ) -> None:
        """Connect, migrate, and open a pool of ``min_size`` to ``max_size`` connections;
        a server that cannot be reached or refuses the login raises :class:`StateError`."""
        self.url = url
        self._local = threading.local()
        try:
            with psycopg.connect(
                url, autocommit=True, connect_timeout=max(1, int(connect_timeout_s))
            ) as conn:
                self._migrate(conn)
        except psycopg.Error as exc:
            raise StateError(
                f"cannot use the PostgreSQL database {redact(url)}: {str(exc).strip()}"
            ) from exc
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True},
            timeout=connect_timeout_s * 3,
            open=False,
            name="fedge-store",
        )
        self._pool.open(wait=True, timeout=connect_timeout_s)

    def _migrate(self, conn: Connection) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
            current = int(row[0] or 0) if row else 0
            for version, script in MIGRATIONS:
                if version > current:
                    for statement in filter(str.strip, script.split(";")):
                        conn.execute(statement.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations VALUES (%s, %s)",
                        (version, datetime.now(UTC).isoformat()),
                    )
                    logger.info("applied store migration %d to %s", version, redact(self.url))

    @property
    def schema_version(self) -> int:
        return self._scalar("SELECT MAX(version) FROM schema_migrations", ())

    # connections and transactions
    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """The thread's transaction: joined when one is open, else begun on a pooled
        connection with the write lock taken."""
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

    @contextmanager
    def _reader(self) -> Iterator[Connection]:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self._connection() as conn:
            yield conn

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise StateError(
                f"no connection to the PostgreSQL database {redact(self.url)}: {exc}"
            ) from exc

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._tx():
            yield

    def transaction(self) -> AbstractContextManager[None]:
        return self._transaction()

    def close(self) -> None:
        self._pool.close()

    # helpers
    def _insert(self, sql: str, params: tuple[Any, ...], conflict: ConflictError) -> None:
        with self._tx() as conn:
            try:
                with conn.transaction():  # a savepoint: a conflict undoes this insert alone
                    conn.execute(sql.encode(), params)
            except pg_errors.UniqueViolation as exc:
                raise conflict from exc

    def _next_id(self, conn: Connection, table: str, column: str) -> int:
        """The next id of ``table`` (callers hold the write lock, so no one else takes it)."""
        row = conn.execute(
            f"SELECT COALESCE(MAX({column}), 0) + 1 FROM {table}".encode()  # noqa: S608
        ).fetchone()
        return int(row[0]) if row else 1

    def _one(self, cls: type[R], sql: str, params: tuple[Any, ...]) -> R | None:
        with self._reader() as conn:
            row = conn.execute(sql.encode(), params).fetchone()
        return None if row is None else cls.from_dict(json.loads(row[0]))

    def _all(self, cls: type[R], sql: str, params: tuple[Any, ...] = ()) -> list[R]:
        with self._reader() as conn:
            rows = conn.execute(sql.encode(), params).fetchall()
        return [cls.from_dict(json.loads(row[0])) for row in rows]

    def _scalar(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._reader() as conn:
            row = conn.execute(sql.encode(), params).fetchone()
        return int(row[0] or 0) if row else 0

    def _update(self, sql: str, params: tuple[Any, ...], missing: NotFoundError) -> None:
        with self._tx() as conn:
            if conn.execute(sql.encode(), params).rowcount != 1:
                raise missing

    @staticmethod
    def _where(filters: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
        used = {k: v for k, v in filters.items() if v is not None}
        if not used:
            return "", ()
        return " WHERE " + " AND ".join(f"{k} = %s" for k in used), tuple(used.values())

    # clients
    def add_client(self, client: ClientRecord) -> None:
        self._insert(
            "INSERT INTO clients (client_id, token_hash, doc) VALUES (%s, %s, %s)",
            (client.client_id, client.token_hash, _dump(client)),
            ConflictError(f"client {client.client_id!r} exists", code="duplicate"),
        )

    def get_client(self, client_id: str) -> ClientRecord | None:
        return self._one(ClientRecord, "SELECT doc FROM clients WHERE client_id = %s", (client_id,))

    def find_client(self, token_hash: str) -> ClientRecord | None:
        return self._one(
            ClientRecord, "SELECT doc FROM clients WHERE token_hash = %s", (token_hash,)
        )

    def list_clients(self) -> list[ClientRecord]:
        return self._all(ClientRecord, "SELECT doc FROM clients ORDER BY seq")

    def count_clients(self) -> int:
        return self._scalar("SELECT COUNT(*) FROM clients", ())

    def save_client(self, client: ClientRecord) -> None:
        self._update(
            "UPDATE clients SET doc = %s WHERE client_id = %s",
            (_dump(client), client.client_id),
            NotFoundError(f"no client {client.client_id!r}", code="client_not_found"),
        )

    def set_client_token(self, client_id: str, token_hash: str) -> ClientRecord:
        with self._tx() as conn:
            client = self.get_client(client_id)
            if client is None:
                raise NotFoundError(f"no client {client_id!r}", code="client_not_found")
            rotated = type(client).from_dict({**client.to_dict(), "token_hash": token_hash})
            try:
                with conn.transaction():
                    conn.execute(
                        "UPDATE clients SET token_hash = %s, doc = %s WHERE client_id = %s",
                        (token_hash, _dump(rotated), client_id),
                    )
            except pg_errors.UniqueViolation as exc:
                raise ConflictError(
                    "that token hash belongs to a client", code="duplicate"
                ) from exc
            return rotated

    # enrollment tokens
    def add_enrollment_token(self, token: EnrollmentTokenRecord) -> None:
        self._insert(
            "INSERT INTO enrollment_tokens (token_id, token_hash, doc) VALUES (%s, %s, %s)",
            (token.token_id, token.token_hash, _dump(token)),
            ConflictError(f"enrollment token {token.token_id!r} exists", code="duplicate"),
        )

    def get_enrollment_token(self, token_id: str) -> EnrollmentTokenRecord | None:
        return self._one(
            EnrollmentTokenRecord,
            "SELECT doc FROM enrollment_tokens WHERE token_id = %s",
            (token_id,),
        )

    def find_enrollment_token(self, token_hash: str) -> EnrollmentTokenRecord | None:
        return self._one(
            EnrollmentTokenRecord,
            "SELECT doc FROM enrollment_tokens WHERE token_hash = %s",
            (token_hash,),
        )

    def list_enrollment_tokens(self) -> list[EnrollmentTokenRecord]:
        return self._all(EnrollmentTokenRecord, "SELECT doc FROM enrollment_tokens ORDER BY seq")

    def save_enrollment_token(self, token: EnrollmentTokenRecord) -> None:
        self._update(
            "UPDATE enrollment_tokens SET doc = %s WHERE token_id = %s",
            (_dump(token), token.token_id),
            NotFoundError(
                f"no enrollment token {token.token_id!r}", code="enrollment_token_not_found"
            ),
        )

    # rounds
    def add_round(self, round_: RoundRecord) -> RoundRecord:
        with self._tx() as conn:
            stored = RoundRecord.from_dict(
                {**round_.to_dict(), "round_id": self._next_id(conn, "rounds", "round_id")}
            )
            self._insert(
                "INSERT INTO rounds (round_id, state, doc) VALUES (%s, %s, %s)",
                (stored.round_id, stored.state, _dump(stored)),
                ConflictError("round exists", code="duplicate"),
            )
            return stored

    def get_round(self, round_id: int) -> RoundRecord | None:
        return self._one(RoundRecord, "SELECT doc FROM rounds WHERE round_id = %s", (round_id,))

    def list_rounds(self, states: Collection[str] | None = None) -> list[RoundRecord]:
        if states is None:
            return self._all(RoundRecord, "SELECT doc FROM rounds ORDER BY round_id")
        return self._all(
            RoundRecord,
            "SELECT doc FROM rounds WHERE state = ANY(%s) ORDER BY round_id",
            (list(states),),
        )

    def save_round(self, round_: RoundRecord) -> None:
        self._update(
            "UPDATE rounds SET state = %s, doc = %s WHERE round_id = %s",
            (round_.state, _dump(round_), round_.round_id),
            NotFoundError(f"no round {round_.round_id}", code="round_not_found"),
        )

    # tasks
    def add_task(self, task: TaskRecord) -> None:
        self._insert(
            "INSERT INTO tasks (task_id, client_id, round_id, status, doc) "
            "VALUES (%s, %s, %s, %s, %s)",
            (task.task_id, task.client_id, task.round_id, task.status, _dump(task)),
            ConflictError(f"task {task.task_id!r} exists", code="duplicate"),
        )

    def get_task(self, task_id: str) -> TaskRecord | None:
        return self._one(TaskRecord, "SELECT doc FROM tasks WHERE task_id = %s", (task_id,))

    def list_tasks(
        self,
        *,
        client_id: str | None = None,
        round_id: int | None = None,
        status: str | None = None,
    ) -> list[TaskRecord]:
        where, params = self._where(
            {"client_id": client_id, "round_id": round_id, "status": status}
        )
        return self._all(TaskRecord, f"SELECT doc FROM tasks{where} ORDER BY seq", params)  # noqa: S608

    def count_tasks(self, *, round_id: int, status: str | None = None) -> int:
        where, params = self._where({"round_id": round_id, "status": status})
        return self._scalar(f"SELECT COUNT(*) FROM tasks{where}", params)  # noqa: S608

    def save_task(self, task: TaskRecord) -> None:
        self._update(
            "UPDATE tasks SET client_id = %s, round_id = %s, status = %s, doc = %s "
            "WHERE task_id = %s",
            (task.client_id, task.round_id, task.status, _dump(task), task.task_id),
            NotFoundError(f"no task {task.task_id!r}", code="task_not_found"),
        )

    # updates
    def add_update(self, update: UpdateRecord) -> None:
        with self._tx():
            if self.get_update(update.round_id, update.client_id) is not None:
                raise ConflictError(
                    f"client {update.client_id!r} already has an update in round {update.round_id}",
                    code="duplicate_update",
                )
            self._insert(
                "INSERT INTO updates (round_id, client_id, idempotency_key, quarantine, doc) "
                "VALUES (%s, %s, %s, %s, %s)",
                (
                    update.round_id,
                    update.client_id,
                    update.idempotency_key,
                    _quarantine(update),
                    _dump(update),
                ),
                ConflictError("idempotency key already used", code="idempotency_conflict"),
            )

    def get_update(self, round_id: int, client_id: str) -> UpdateRecord | None:
        return self._one(
            UpdateRecord,
            "SELECT doc FROM updates WHERE round_id = %s AND client_id = %s",
            (round_id, client_id),
        )

    def find_update(self, client_id: str, idempotency_key: str) -> UpdateRecord | None:
        return self._one(
            UpdateRecord,
            "SELECT doc FROM updates WHERE client_id = %s AND idempotency_key = %s",
            (client_id, idempotency_key),
        )

    def list_updates(self, round_id: int) -> list[UpdateRecord]:
        return self._all(
            UpdateRecord, "SELECT doc FROM updates WHERE round_id = %s ORDER BY seq", (round_id,)
        )

    def count_updates(self, round_id: int | None = None) -> int:
        where, params = self._where({"round_id": round_id})
        return self._scalar(f"SELECT COUNT(*) FROM updates{where}", params)  # noqa: S608

    def save_update(self, update: UpdateRecord) -> None:
        self._update(
            "UPDATE updates SET quarantine = %s, doc = %s WHERE round_id = %s AND client_id = %s",
            (_quarantine(update), _dump(update), update.round_id, update.client_id),
            NotFoundError(
                f"no update of client {update.client_id!r} in round {update.round_id}",
                code="update_not_found",
            ),
        )

    def list_quarantined_updates(
        self, client_id: str | None = None, *, released: bool = False
    ) -> list[UpdateRecord]:
        states = ["held", "released"] if released else ["held"]
        sql = "SELECT doc FROM updates WHERE quarantine = ANY(%s)"
        params: tuple[Any, ...] = (states,)
        if client_id is not None:
            sql, params = sql + " AND client_id = %s", (*params, client_id)
        return self._all(UpdateRecord, sql + " ORDER BY seq", params)

    # secure-aggregation messages
    def add_secagg(self, record: SecAggRecord) -> None:
        self._insert(
            "INSERT INTO secagg_messages (round_id, stage, client_id, doc) VALUES (%s, %s, %s, %s)",
            (record.round_id, record.stage, record.client_id, _dump(record)),
            ConflictError(
                f"client {record.client_id!r} already answered stage {record.stage} of "
                f"round {record.round_id}",
                code="secagg_duplicate",
            ),
        )

    def get_secagg(self, round_id: int, stage: str, client_id: str) -> SecAggRecord | None:
        return self._one(
            SecAggRecord,
            "SELECT doc FROM secagg_messages WHERE round_id = %s AND stage = %s AND client_id = %s",
            (round_id, stage, client_id),
        )

    def list_secagg(self, round_id: int, stage: str) -> list[SecAggRecord]:
        return self._all(
            SecAggRecord,
            "SELECT doc FROM secagg_messages WHERE round_id = %s AND stage = %s ORDER BY seq",
            (round_id, stage),
        )

    # rejections
    def add_rejection(self, rejection: RejectionRecord) -> None:
        self._insert(
            "INSERT INTO rejections (at, reason, doc) VALUES (%s, %s, %s)",
            (rejection.at, rejection.reason, _dump(rejection)),
            ConflictError("rejection exists", code="duplicate"),
        )

    def rejection_counts(self, *, since: float | None = None) -> dict[str, int]:
        where, params = ("", ()) if since is None else (" WHERE at >= %s", (float(since),))
        with self._reader() as conn:
            rows = conn.execute(
                f"SELECT reason, COUNT(*) FROM rejections{where} GROUP BY reason "  # noqa: S608
                "ORDER BY reason".encode(),
                params,
            ).fetchall()
        return {str(reason): int(count) for reason, count in rows}

    # models
    def add_model(self, model: ModelRecord) -> None:
        self._insert(
            "INSERT INTO models (version, seq, stage, doc) VALUES (%s, %s, %s, %s)",
            (model.version, model.seq, model.stage, _dump(model)),
            ConflictError(f"model {model.version!r} exists", code="duplicate"),
        )

    def get_model(self, version: str) -> ModelRecord | None:
        return self._one(ModelRecord, "SELECT doc FROM models WHERE version = %s", (version,))

    def list_models(self, *, stage: str | None = None) -> list[ModelRecord]:
        where, params = self._where({"stage": stage})
        return self._all(ModelRecord, f"SELECT doc FROM models{where} ORDER BY seq", params)  # noqa: S608

    def save_model(self, model: ModelRecord) -> None:
        self._update(
            "UPDATE models SET stage = %s, doc = %s WHERE version = %s",
            (model.stage, _dump(model), model.version),
            NotFoundError(f"no model {model.version!r}", code="model_not_found"),
        )

    def add_model_event(self, event: ModelEvent) -> ModelEvent:
        with self._tx() as conn:
            stored = ModelEvent.from_dict(
                {**event.to_dict(), "seq": self._next_id(conn, "model_events", "seq")}
            )
            self._insert(
                "INSERT INTO model_events (seq, version, doc) VALUES (%s, %s, %s)",
                (stored.seq, stored.version, _dump(stored)),
                ConflictError("event exists", code="duplicate"),
            )
            return stored

    def list_model_events(self, version: str | None = None) -> list[ModelEvent]:
        where, params = self._where({"version": version})
        return self._all(ModelEvent, f"SELECT doc FROM model_events{where} ORDER BY seq", params)  # noqa: S608

    # reports
    def add_report(self, report: ReportRecord) -> ReportRecord:
        with self._tx() as conn:
            stored = ReportRecord.from_dict(
                {**report.to_dict(), "report_id": self._next_id(conn, "reports", "report_id")}
            )
            self._insert(
                "INSERT INTO reports (report_id, kind, model_version, doc) VALUES (%s, %s, %s, %s)",
                (stored.report_id, stored.kind, stored.model_version, _dump(stored)),
                ConflictError("report exists", code="duplicate"),
            )
            return stored

    def list_reports(
        self, *, kind: str | None = None, model_version: str | None = None
    ) -> list[ReportRecord]:
        where, params = self._where({"kind": kind, "model_version": model_version})
        return self._all(ReportRecord, f"SELECT doc FROM reports{where} ORDER BY report_id", params)  # noqa: S608

    # alerts
    def add_alert(self, alert: AlertRecord) -> AlertRecord:
        with self._tx() as conn:
            stored = AlertRecord.from_dict(
                {**alert.to_dict(), "alert_id": self._next_id(conn, "alerts", "alert_id")}
            )
            self._insert(
                "INSERT INTO alerts (alert_id, kind, created_at, doc) VALUES (%s, %s, %s, %s)",
                (stored.alert_id, stored.kind, stored.created_at, _dump(stored)),
                ConflictError("alert exists", code="duplicate"),
            )
            return stored

    def list_alerts(
        self, *, kind: str | None = None, since: float | None = None
    ) -> list[AlertRecord]:
        filters: dict[str, Any] = {"kind": kind}
        where, params = self._where(filters)
        if since is not None:
            where = (where + " AND" if where else " WHERE") + " created_at >= %s"
            params = (*params, float(since))
        return self._all(AlertRecord, f"SELECT doc FROM alerts{where} ORDER BY alert_id", params)  # noqa: S608

    # pages
    def page_clients(self, *, offset: int, limit: int) -> list[ClientRecord]:
        sql = "SELECT doc FROM clients ORDER BY seq LIMIT %s OFFSET %s"
        return self._all(ClientRecord, sql, (limit, offset))

    def page_rounds(self, *, offset: int, limit: int) -> list[RoundRecord]:
        sql = "SELECT doc FROM rounds ORDER BY round_id DESC LIMIT %s OFFSET %s"
        return self._all(RoundRecord, sql, (limit, offset))

    def count_rounds(self) -> int:
        return self._scalar("SELECT COUNT(*) FROM rounds", ())

    def page_models(self, *, offset: int, limit: int) -> list[ModelRecord]:
        sql = "SELECT doc FROM models ORDER BY seq DESC LIMIT %s OFFSET %s"
        return self._all(ModelRecord, sql, (limit, offset))

    def count_models(self) -> int:
        return self._scalar("SELECT COUNT(*) FROM models", ())

    def page_alerts(self, *, offset: int, limit: int) -> list[AlertRecord]:
        sql = "SELECT doc FROM alerts ORDER BY alert_id DESC LIMIT %s OFFSET %s"
        return self._all(AlertRecord, sql, (limit, offset))

    def count_alerts(self) -> int:
        return self._scalar("SELECT COUNT(*) FROM alerts", ())

    def page_reports(self, *, kind: str, offset: int, limit: int) -> list[ReportRecord]:
        sql = "SELECT doc FROM reports WHERE kind = %s ORDER BY report_id DESC LIMIT %s OFFSET %s"
        return self._all(ReportRecord, sql, (kind, limit, offset))

    def count_reports(self, *, kind: str) -> int:
        return self._scalar("SELECT COUNT(*) FROM reports WHERE kind = %s", (kind,))

    def latest_updates(self, client_ids: Collection[str]) -> dict[str, UpdateRecord]:
        wanted = list(client_ids)
        if not wanted:
            return {}
        sql = (
            "SELECT doc FROM updates WHERE seq IN (SELECT MAX(seq) FROM updates "
            "WHERE client_id = ANY(%s) GROUP BY client_id)"
        )
        return {u.client_id: u for u in self._all(UpdateRecord, sql, (wanted,))}

    def set_client_seen(self, client_id: str, at: float, transport: str) -> None:
        # One upsert is atomic on its own: it needs neither the write lock nor a transaction.
        with self._reader() as conn:
            conn.execute(
                b"INSERT INTO client_presence VALUES (%s, %s, %s) ON CONFLICT (client_id) "
                b"DO UPDATE SET seen_at = excluded.seen_at, transport = excluded.transport",
                (client_id, float(at), transport),
            )

    def clients_seen(self, client_ids: Collection[str]) -> dict[str, tuple[float, str]]:
        wanted = list(client_ids)
        if not wanted:
            return {}
        with self._reader() as conn:
            rows = conn.execute(
                b"SELECT client_id, seen_at, transport FROM client_presence "
                b"WHERE client_id = ANY(%s)",
                (wanted,),
            ).fetchall()
        return {str(c): (float(at), str(t)) for c, at, t in rows}
