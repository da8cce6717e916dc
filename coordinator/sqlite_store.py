"""The embedded default store: SQLite in WAL mode with ``synchronous=FULL``.

Each record is a JSON document beside the columns the queries need. One connection,
guarded by a re-entrant lock, serves every thread of the process; other processes (the
``fedge-coordinator models`` CLI in ``--db`` mode) open their own and wait up to
``busy_timeout`` for the write lock. ``synchronous=FULL`` makes every commit durable
before it returns: an acknowledged update survives ``kill -9`` and power loss. Opening
checks every page (``PRAGMA quick_check``): a file that is not SQLite or has corrupt
pages is refused with :class:`~coordinator.errors.StateError` before anything runs on it.
Schema changes are numbered migrations recorded in ``schema_migrations``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

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

__all__ = ["MIGRATIONS", "SQLiteStore"]

logger = logging.getLogger(__name__)
R = TypeVar("R", bound=Any)

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE clients (client_id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE,
                              doc TEXT NOT NULL);
        CREATE TABLE rounds (round_id INTEGER PRIMARY KEY AUTOINCREMENT, state TEXT NOT NULL,
                             doc TEXT NOT NULL);
        CREATE TABLE tasks (seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL UNIQUE,
                            client_id TEXT NOT NULL, round_id INTEGER, status TEXT NOT NULL,
                            doc TEXT NOT NULL);
        CREATE INDEX tasks_by_client ON tasks (client_id, status);
        CREATE TABLE updates (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                              round_id INTEGER NOT NULL, client_id TEXT NOT NULL,
                              idempotency_key TEXT NOT NULL, doc TEXT NOT NULL,
                              UNIQUE (round_id, client_id), UNIQUE (client_id, idempotency_key));
        CREATE TABLE rejections (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
                                 reason TEXT NOT NULL, doc TEXT NOT NULL);
        CREATE INDEX rejections_by_time ON rejections (at);
        CREATE TABLE models (version TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE,
                             stage TEXT NOT NULL, doc TEXT NOT NULL);
        CREATE TABLE model_events (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                                   version TEXT NOT NULL, doc TEXT NOT NULL);
        CREATE TABLE reports (report_id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
                              model_version TEXT, doc TEXT NOT NULL);
        CREATE TABLE alerts (alert_id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
                             created_at REAL NOT NULL, doc TEXT NOT NULL);
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
        CREATE TABLE secagg_messages (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                                      round_id INTEGER NOT NULL, stage TEXT NOT NULL,
                                      client_id TEXT NOT NULL, doc TEXT NOT NULL,
                                      UNIQUE (round_id, stage, client_id));
        """,
    ),
    (
        4,
        """
        CREATE TABLE enrollment_tokens (seq INTEGER PRIMARY KEY AUTOINCREMENT,
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
        CREATE TABLE client_presence (client_id TEXT PRIMARY KEY, seen_at REAL NOT NULL,
                                      transport TEXT NOT NULL);
        CREATE INDEX model_events_by_version ON model_events (version, seq);
        """,
    ),
)


def _dump(record: Any) -> str:
    return json.dumps(record.to_dict(), sort_keys=True, allow_nan=False)


def _quarantine(update: UpdateRecord) -> str | None:
    """The ``updates.quarantine`` column: held, released, or NULL (never quarantined)."""
    if update.quarantine is None:
        return None
    return "held" if update.released_at is None else "released"


class SQLiteStore:
    """The Store Protocol over one SQLite file (created, and migrated, on open)."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        """Open (or create) the database, check its pages (``PRAGMA quick_check``) and
        migrate it; a file SQLite cannot read raises :class:`StateError`."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._depth = 0
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1e3
        )
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot enable WAL: got {mode}")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._check_pages()
            self._migrate()
        except (sqlite3.DatabaseError, StateError) as exc:
            self._conn.close()
            if isinstance(exc, StateError):
                raise
            if "malformed" in str(exc):  # a damaged page of the schema: before quick_check
                raise StateError(f"the state database {self.path} is corrupt: {exc}") from exc
            raise StateError(f"cannot read the state database {self.path}: {exc}") from exc

    def _check_pages(self) -> None:
        """SQLite's quick integrity check of every page, before any record is trusted."""
        try:
            problems = [str(row[0]) for row in self._conn.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as exc:  # a page so damaged that the check stops on it
            problems = [str(exc)]
        if problems != ["ok"]:
            raise StateError(
                f"the state database {self.path} is corrupt: {'; '.join(problems)[:500]}"
            )

    def _migrate(self) -> None:
        with self._tx():
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            row = self._conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
            current = row[0] or 0
            for version, script in MIGRATIONS:
                if version > current:
                    for statement in filter(str.strip, script.split(";")):
                        self._conn.execute(statement)
                    self._conn.execute(
                        "INSERT INTO schema_migrations VALUES (?, ?)",
                        (version, datetime.now(UTC).isoformat()),
                    )
                    logger.info("applied store migration %d to %s", version, self.path)

    @property
    def schema_version(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
            return int(row[0] or 0)

    @contextmanager
    def _tx(self) -> Iterator[None]:
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outer:
                    self._conn.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self._conn.execute("COMMIT")

    def transaction(self) -> AbstractContextManager[None]:
        return self._tx()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # helpers
    def _insert(self, sql: str, params: tuple[Any, ...], conflict: ConflictError) -> int:
        with self._tx():
            try:
                cursor = self._conn.execute(sql, params)
            except sqlite3.IntegrityError as exc:
                raise conflict from exc
            return int(cursor.lastrowid or 0)

    def _one(self, cls: type[R], sql: str, params: tuple[Any, ...]) -> R | None:
        with self._lock:
            row = self._conn.execute(sql, params).fetchone()
        return None if row is None else cls.from_dict(json.loads(row[0]))

    def _all(self, cls: type[R], sql: str, params: tuple[Any, ...] = ()) -> list[R]:
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [cls.from_dict(json.loads(row[0])) for row in rows]

    def _update(self, sql: str, params: tuple[Any, ...], missing: NotFoundError) -> None:
        with self._tx():
            if self._conn.execute(sql, params).rowcount != 1:
                raise missing

    @staticmethod
    def _where(filters: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
        used = {k: v for k, v in filters.items() if v is not None}
        if not used:
            return "", ()
        return " WHERE " + " AND ".join(f"{k} = ?" for k in used), tuple(used.values())

    # clients
    def add_client(self, client: ClientRecord) -> None:
        self._insert(
            "INSERT INTO clients VALUES (?, ?, ?)",
            (client.client_id, client.token_hash, _dump(client)),
            ConflictError(f"client {client.client_id!r} exists", code="duplicate"),
        )

    def get_client(self, client_id: str) -> ClientRecord | None:
        return self._one(ClientRecord, "SELECT doc FROM clients WHERE client_id = ?", (client_id,))

    def find_client(self, token_hash: str) -> ClientRecord | None:
        return self._one(
            ClientRecord, "SELECT doc FROM clients WHERE token_hash = ?", (token_hash,)
        )

    def list_clients(self) -> list[ClientRecord]:
        return self._all(ClientRecord, "SELECT doc FROM clients ORDER BY rowid")

    def count_clients(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM clients").fetchone()[0])

    def save_client(self, client: ClientRecord) -> None:
        self._update(
            "UPDATE clients SET doc = ? WHERE client_id = ?",
            (_dump(client), client.client_id),
            NotFoundError(f"no client {client.client_id!r}", code="client_not_found"),
        )

    def set_client_token(self, client_id: str, token_hash: str) -> ClientRecord:
        with self._tx():
            client = self.get_client(client_id)
            if client is None:
                raise NotFoundError(f"no client {client_id!r}", code="client_not_found")
            rotated = type(client).from_dict({**client.to_dict(), "token_hash": token_hash})
            try:
                self._conn.execute(
                    "UPDATE clients SET token_hash = ?, doc = ? WHERE client_id = ?",
                    (token_hash, _dump(rotated), client_id),
                )
            except sqlite3.IntegrityError as exc:
                raise ConflictError(
                    "that token hash belongs to a client", code="duplicate"
                ) from exc
            return rotated

    # enrollment tokens
    def add_enrollment_token(self, token: EnrollmentTokenRecord) -> None:
        self._insert(
            "INSERT INTO enrollment_tokens (token_id, token_hash, doc) VALUES (?, ?, ?)",
            (token.token_id, token.token_hash, _dump(token)),
            ConflictError(f"enrollment token {token.token_id!r} exists", code="duplicate"),
        )

    def get_enrollment_token(self, token_id: str) -> EnrollmentTokenRecord | None:
        return self._one(
            EnrollmentTokenRecord,
            "SELECT doc FROM enrollment_tokens WHERE token_id = ?",
            (token_id,),
        )

    def find_enrollment_token(self, token_hash: str) -> EnrollmentTokenRecord | None:
        return self._one(
            EnrollmentTokenRecord,
            "SELECT doc FROM enrollment_tokens WHERE token_hash = ?",
            (token_hash,),
        )

    def list_enrollment_tokens(self) -> list[EnrollmentTokenRecord]:
        return self._all(EnrollmentTokenRecord, "SELECT doc FROM enrollment_tokens ORDER BY seq")

    def save_enrollment_token(self, token: EnrollmentTokenRecord) -> None:
        self._update(
            "UPDATE enrollment_tokens SET doc = ? WHERE token_id = ?",
            (_dump(token), token.token_id),
            NotFoundError(
                f"no enrollment token {token.token_id!r}", code="enrollment_token_not_found"
            ),
        )

    # rounds
    def add_round(self, round_: RoundRecord) -> RoundRecord:
        with self._tx():
            round_id = self._insert(
                "INSERT INTO rounds (state, doc) VALUES (?, '{}')",
                (round_.state,),
                ConflictError("round exists", code="duplicate"),
            )
            stored = RoundRecord.from_dict({**round_.to_dict(), "round_id": round_id})
            self._conn.execute(
                "UPDATE rounds SET doc = ? WHERE round_id = ?", (_dump(stored), round_id)
            )
            return stored

    def get_round(self, round_id: int) -> RoundRecord | None:
        return self._one(RoundRecord, "SELECT doc FROM rounds WHERE round_id = ?", (round_id,))

    def list_rounds(self, states: Collection[str] | None = None) -> list[RoundRecord]:
        if states is None:
            return self._all(RoundRecord, "SELECT doc FROM rounds ORDER BY round_id")
        wanted = tuple(states)
        marks = ", ".join("?" * len(wanted))
        return self._all(
            RoundRecord,
            f"SELECT doc FROM rounds WHERE state IN ({marks}) ORDER BY round_id",  # noqa: S608
            wanted,
        )

    def save_round(self, round_: RoundRecord) -> None:
        self._update(
            "UPDATE rounds SET state = ?, doc = ? WHERE round_id = ?",
            (round_.state, _dump(round_), round_.round_id),
            NotFoundError(f"no round {round_.round_id}", code="round_not_found"),
        )

    # tasks
    def add_task(self, task: TaskRecord) -> None:
        self._insert(
            "INSERT INTO tasks (task_id, client_id, round_id, status, doc) VALUES (?, ?, ?, ?, ?)",
            (task.task_id, task.client_id, task.round_id, task.status, _dump(task)),
            ConflictError(f"task {task.task_id!r} exists", code="duplicate"),
        )

    def get_task(self, task_id: str) -> TaskRecord | None:
        return self._one(TaskRecord, "SELECT doc FROM tasks WHERE task_id = ?", (task_id,))

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
        with self._lock:
            row = self._conn.execute(f"SELECT COUNT(*) FROM tasks{where}", params).fetchone()  # noqa: S608
        return int(row[0])

    def save_task(self, task: TaskRecord) -> None:
        self._update(
            "UPDATE tasks SET client_id = ?, round_id = ?, status = ?, doc = ? WHERE task_id = ?",
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
                "VALUES (?, ?, ?, ?, ?)",
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
            "SELECT doc FROM updates WHERE round_id = ? AND client_id = ?",
            (round_id, client_id),
        )

    def find_update(self, client_id: str, idempotency_key: str) -> UpdateRecord | None:
        return self._one(
            UpdateRecord,
            "SELECT doc FROM updates WHERE client_id = ? AND idempotency_key = ?",
            (client_id, idempotency_key),
        )

    def list_updates(self, round_id: int) -> list[UpdateRecord]:
        return self._all(
            UpdateRecord, "SELECT doc FROM updates WHERE round_id = ? ORDER BY seq", (round_id,)
        )

    def count_updates(self, round_id: int | None = None) -> int:
        where, params = self._where({"round_id": round_id})
        with self._lock:
            row = self._conn.execute(f"SELECT COUNT(*) FROM updates{where}", params).fetchone()  # noqa: S608
        return int(row[0])

    def save_update(self, update: UpdateRecord) -> None:
        self._update(
            "UPDATE updates SET quarantine = ?, doc = ? WHERE round_id = ? AND client_id = ?",
            (_quarantine(update), _dump(update), update.round_id, update.client_id),
            NotFoundError(
                f"no update of client {update.client_id!r} in round {update.round_id}",
                code="update_not_found",
            ),
        )

    def list_quarantined_updates(
        self, client_id: str | None = None, *, released: bool = False
    ) -> list[UpdateRecord]:
        states = ("held", "released") if released else ("held",)
        sql = "SELECT doc FROM updates WHERE quarantine IN (?, ?)"
        params: tuple[Any, ...] = (states[0], states[-1])
        if client_id is not None:
            sql, params = sql + " AND client_id = ?", (*params, client_id)
        return self._all(UpdateRecord, sql + " ORDER BY seq", params)

    # secure-aggregation messages
    def add_secagg(self, record: SecAggRecord) -> None:
        self._insert(
            "INSERT INTO secagg_messages (round_id, stage, client_id, doc) VALUES (?, ?, ?, ?)",
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
            "SELECT doc FROM secagg_messages WHERE round_id = ? AND stage = ? AND client_id = ?",
            (round_id, stage, client_id),
        )

    def list_secagg(self, round_id: int, stage: str) -> list[SecAggRecord]:
        return self._all(
            SecAggRecord,
            "SELECT doc FROM secagg_messages WHERE round_id = ? AND stage = ? ORDER BY seq",
            (round_id, stage),
        )

    # rejections
    def add_rejection(self, rejection: RejectionRecord) -> None:
        self._insert(
            "INSERT INTO rejections (at, reason, doc) VALUES (?, ?, ?)",
            (rejection.at, rejection.reason, _dump(rejection)),
            ConflictError("rejection exists", code="duplicate"),
        )

    def rejection_counts(self, *, since: float | None = None) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT reason, COUNT(*) FROM rejections WHERE at >= ? GROUP BY reason "
                "ORDER BY reason",
                (float("-inf") if since is None else since,),
            ).fetchall()
        return {str(reason): int(count) for reason, count in rows}

    # models
    def add_model(self, model: ModelRecord) -> None:
        self._insert(
            "INSERT INTO models VALUES (?, ?, ?, ?)",
            (model.version, model.seq, model.stage, _dump(model)),
            ConflictError(f"model {model.version!r} exists", code="duplicate"),
        )

    def get_model(self, version: str) -> ModelRecord | None:
        return self._one(ModelRecord, "SELECT doc FROM models WHERE version = ?", (version,))

    def list_models(self, *, stage: str | None = None) -> list[ModelRecord]:
        where, params = self._where({"stage": stage})
        return self._all(ModelRecord, f"SELECT doc FROM models{where} ORDER BY seq", params)  # noqa: S608

    def save_model(self, model: ModelRecord) -> None:
        self._update(
            "UPDATE models SET stage = ?, doc = ? WHERE version = ?",
            (model.stage, _dump(model), model.version),
            NotFoundError(f"no model {model.version!r}", code="model_not_found"),
        )

    def add_model_event(self, event: ModelEvent) -> ModelEvent:
        with self._tx():
            seq = self._insert(
                "INSERT INTO model_events (version, doc) VALUES (?, '{}')",
                (event.version,),
                ConflictError("event exists", code="duplicate"),
            )
            stored = ModelEvent.from_dict({**event.to_dict(), "seq": seq})
            self._conn.execute(
                "UPDATE model_events SET doc = ? WHERE seq = ?", (_dump(stored), seq)
            )
            return stored

    def list_model_events(self, version: str | None = None) -> list[ModelEvent]:
        where, params = self._where({"version": version})
        return self._all(ModelEvent, f"SELECT doc FROM model_events{where} ORDER BY seq", params)  # noqa: S608

    # reports
    def add_report(self, report: ReportRecord) -> ReportRecord:
        with self._tx():
            report_id = self._insert(
                "INSERT INTO reports (kind, model_version, doc) VALUES (?, ?, '{}')",
                (report.kind, report.model_version),
                ConflictError("report exists", code="duplicate"),
            )
            stored = ReportRecord.from_dict({**report.to_dict(), "report_id": report_id})
            self._conn.execute(
                "UPDATE reports SET doc = ? WHERE report_id = ?", (_dump(stored), report_id)
            )
            return stored

    def list_reports(
        self, *, kind: str | None = None, model_version: str | None = None
    ) -> list[ReportRecord]:
        where, params = self._where({"kind": kind, "model_version": model_version})
        return self._all(ReportRecord, f"SELECT doc FROM reports{where} ORDER BY report_id", params)  # noqa: S608

    # alerts
    def add_alert(self, alert: AlertRecord) -> AlertRecord:
        with self._tx():
            alert_id = self._insert(
                "INSERT INTO alerts (kind, created_at, doc) VALUES (?, ?, '{}')",
                (alert.kind, alert.created_at),
                ConflictError("alert exists", code="duplicate"),
            )
            stored = AlertRecord.from_dict({**alert.to_dict(), "alert_id": alert_id})
            self._conn.execute(
                "UPDATE alerts SET doc = ? WHERE alert_id = ?", (_dump(stored), alert_id)
            )
            return stored

    def list_alerts(
        self, *, kind: str | None = None, since: float | None = None
    ) -> list[AlertRecord]:
        alerts = self._all(
            AlertRecord,
            "SELECT doc FROM alerts" + self._where({"kind": kind})[0] + " ORDER BY alert_id",  # noqa: S608
            self._where({"kind": kind})[1],
        )
        return [a for a in alerts if since is None or a.created_at >= since]

    # pages
    def _count(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        with self._lock:
            return int(self._conn.execute(sql, params).fetchone()[0])

    def page_clients(self, *, offset: int, limit: int) -> list[ClientRecord]:
        return self._all(
            ClientRecord, "SELECT doc FROM clients ORDER BY rowid LIMIT ? OFFSET ?", (limit, offset)
        )

    def page_rounds(self, *, offset: int, limit: int) -> list[RoundRecord]:
        sql = "SELECT doc FROM rounds ORDER BY round_id DESC LIMIT ? OFFSET ?"
        return self._all(RoundRecord, sql, (limit, offset))

    def count_rounds(self) -> int:
        return self._count("SELECT COUNT(*) FROM rounds")

    def page_models(self, *, offset: int, limit: int) -> list[ModelRecord]:
        sql = "SELECT doc FROM models ORDER BY seq DESC LIMIT ? OFFSET ?"
        return self._all(ModelRecord, sql, (limit, offset))

    def count_models(self) -> int:
        return self._count("SELECT COUNT(*) FROM models")

    def page_alerts(self, *, offset: int, limit: int) -> list[AlertRecord]:
        sql = "SELECT doc FROM alerts ORDER BY alert_id DESC LIMIT ? OFFSET ?"
        return self._all(AlertRecord, sql, (limit, offset))

    def count_alerts(self) -> int:
        return self._count("SELECT COUNT(*) FROM alerts")

    def page_reports(self, *, kind: str, offset: int, limit: int) -> list[ReportRecord]:
        sql = "SELECT doc FROM reports WHERE kind = ? ORDER BY report_id DESC LIMIT ? OFFSET ?"
        return self._all(ReportRecord, sql, (kind, limit, offset))

    def count_reports(self, *, kind: str) -> int:
        return self._count("SELECT COUNT(*) FROM reports WHERE kind = ?", (kind,))

    def latest_updates(self, client_ids: Collection[str]) -> dict[str, UpdateRecord]:
        wanted = tuple(client_ids)
        if not wanted:
            return {}
        marks = ", ".join("?" * len(wanted))
        sql = (
            "SELECT doc FROM updates WHERE seq IN (SELECT MAX(seq) FROM updates "  # noqa: S608
            f"WHERE client_id IN ({marks}) GROUP BY client_id)"
        )
        return {u.client_id: u for u in self._all(UpdateRecord, sql, wanted)}

    def set_client_seen(self, client_id: str, at: float, transport: str) -> None:
        with self._tx():
            self._conn.execute(
                "INSERT INTO client_presence VALUES (?, ?, ?) ON CONFLICT (client_id) "
                "DO UPDATE SET seen_at = excluded.seen_at, transport = excluded.transport",
                (client_id, float(at), transport),
            )

    def clients_seen(self, client_ids: Collection[str]) -> dict[str, tuple[float, str]]:
        wanted = tuple(client_ids)
        if not wanted:
            return {}
        marks = ", ".join("?" * len(wanted))
        sql = (
            "SELECT client_id, seen_at, transport FROM client_presence "  # noqa: S608
            f"WHERE client_id IN ({marks})"
        )
        with self._lock:
            rows = self._conn.execute(sql, wanted).fetchall()
        return {str(c): (float(at), str(t)) for c, at, t in rows}
