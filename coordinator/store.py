"""The state store: a small Protocol, an in-memory implementation, and :func:`open_store`.

Every implementation passes the one contract suite (``tests/test_coordinator_store.py``).
Each method is atomic; ``with store.transaction():`` makes a group of calls atomic (and
serialises them against other threads). Lists come back in insertion order.
Implementations: :class:`MemoryStore` (tests, demos),
:class:`~coordinator.sqlite_store.SQLiteStore` (the embedded default) and
:class:`~coordinator.postgres_store.PostgresStore` (a PostgreSQL server, behind ``--db
postgresql://...``: the scale-out path).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable, Collection, Hashable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from coordinator.errors import ConflictError, NotFoundError
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
from fedge.errors import ConfigError

__all__ = ["MemoryStore", "Store", "open_store"]


class Store(Protocol):
    """Persistent coordinator state. Methods raise ConflictError on a duplicate key and
    NotFoundError when saving over a record that does not exist."""

    def transaction(self) -> AbstractContextManager[None]: ...
    def close(self) -> None: ...

    def add_client(self, client: ClientRecord) -> None: ...
    def get_client(self, client_id: str) -> ClientRecord | None: ...
    def find_client(self, token_hash: str) -> ClientRecord | None: ...
    def list_clients(self) -> list[ClientRecord]: ...
    def count_clients(self) -> int: ...
    def save_client(self, client: ClientRecord) -> None:
        """Save over an existing client (its token hash stays what it was)."""
        ...

    def set_client_token(self, client_id: str, token_hash: str) -> ClientRecord:
        """Replace a client's token hash (the old token stops matching); the saved client.
        ConflictError when another client has that hash, NotFoundError without the client."""
        ...

    def add_enrollment_token(self, token: EnrollmentTokenRecord) -> None: ...
    def get_enrollment_token(self, token_id: str) -> EnrollmentTokenRecord | None: ...
    def find_enrollment_token(self, token_hash: str) -> EnrollmentTokenRecord | None: ...
    def list_enrollment_tokens(self) -> list[EnrollmentTokenRecord]: ...
    def save_enrollment_token(self, token: EnrollmentTokenRecord) -> None:
        """Save over an existing enrollment token (its hash stays what it was)."""
        ...

    def add_round(self, round_: RoundRecord) -> RoundRecord:
        """Store a new round; its ``round_id`` is assigned here (1, 2, ...)."""
        ...

    def get_round(self, round_id: int) -> RoundRecord | None: ...
    def list_rounds(self, states: Collection[str] | None = None) -> list[RoundRecord]: ...
    def save_round(self, round_: RoundRecord) -> None: ...

    def add_task(self, task: TaskRecord) -> None: ...
    def get_task(self, task_id: str) -> TaskRecord | None: ...
    def list_tasks(
        self,
        *,
        client_id: str | None = None,
        round_id: int | None = None,
        status: str | None = None,
    ) -> list[TaskRecord]: ...
    def count_tasks(self, *, round_id: int, status: str | None = None) -> int:
        """Tasks of ``round_id`` (with ``status`` when given), without reading them."""
        ...

    def save_task(self, task: TaskRecord) -> None: ...

    def add_update(self, update: UpdateRecord) -> None:
        """Store an accepted update; ConflictError when the client already has one in the
        round or already used the idempotency key."""
        ...

    def get_update(self, round_id: int, client_id: str) -> UpdateRecord | None: ...
    def find_update(self, client_id: str, idempotency_key: str) -> UpdateRecord | None: ...
    def list_updates(self, round_id: int) -> list[UpdateRecord]: ...
    def count_updates(self, round_id: int | None = None) -> int:
        """Updates in ``round_id`` (every round's when None), without reading them."""
        ...

    def save_update(self, update: UpdateRecord) -> None:
        """Save over the update of ``(round_id, client_id)`` (its quarantine and release;
        NotFoundError when there is none)."""
        ...

    def list_quarantined_updates(
        self, client_id: str | None = None, *, released: bool = False
    ) -> list[UpdateRecord]:
        """Updates held in quarantine (of ``client_id`` when given), oldest first; with
        ``released`` the released ones too."""
        ...

    def add_secagg(self, record: SecAggRecord) -> None:
        """Store a client's message of a secure-aggregation stage; ConflictError when the
        client already has one for that round and stage."""
        ...

    def get_secagg(self, round_id: int, stage: str, client_id: str) -> SecAggRecord | None: ...
    def list_secagg(self, round_id: int, stage: str) -> list[SecAggRecord]:
        """The stage's messages of ``round_id`` in the order they arrived."""
        ...

    def add_rejection(self, rejection: RejectionRecord) -> None: ...
    def rejection_counts(self, *, since: float | None = None) -> dict[str, int]: ...

    def add_model(self, model: ModelRecord) -> None: ...
    def get_model(self, version: str) -> ModelRecord | None: ...
    def list_models(self, *, stage: str | None = None) -> list[ModelRecord]: ...
    def save_model(self, model: ModelRecord) -> None: ...
    def add_model_event(self, event: ModelEvent) -> ModelEvent:
        """Append an event; its ``seq`` is assigned here."""
        ...

    def list_model_events(self, version: str | None = None) -> list[ModelEvent]: ...

    def add_report(self, report: ReportRecord) -> ReportRecord:
        """Append a report; its ``report_id`` is assigned here."""
        ...

    def list_reports(
        self, *, kind: str | None = None, model_version: str | None = None
    ) -> list[ReportRecord]: ...

    def add_alert(self, alert: AlertRecord) -> AlertRecord:
        """Append an alert; its ``alert_id`` is assigned here."""
        ...

    def list_alerts(
        self, *, kind: str | None = None, since: float | None = None
    ) -> list[AlertRecord]: ...

    # Pages (the dashboard's lists): each reads only the rows of its page. Clients come in
    # registration order; rounds, models, alerts and reports newest first.
    def page_clients(self, *, offset: int, limit: int) -> list[ClientRecord]: ...
    def page_rounds(self, *, offset: int, limit: int) -> list[RoundRecord]: ...
    def count_rounds(self) -> int: ...
    def page_models(self, *, offset: int, limit: int) -> list[ModelRecord]: ...
    def count_models(self) -> int: ...
    def page_alerts(self, *, offset: int, limit: int) -> list[AlertRecord]: ...
    def count_alerts(self) -> int: ...
    def page_reports(self, *, kind: str, offset: int, limit: int) -> list[ReportRecord]: ...
    def count_reports(self, *, kind: str) -> int: ...
    def latest_updates(self, client_ids: Collection[str]) -> dict[str, UpdateRecord]:
        """The last update received from each of ``client_ids`` (those that sent one)."""
        ...

    # Presence: when each client last called, and over which transport.
    def set_client_seen(self, client_id: str, at: float, transport: str) -> None:
        """Record that ``client_id`` made an authenticated call at ``at`` over
        ``transport`` (``rest`` or ``grpc``); an earlier record of it is replaced."""
        ...

    def clients_seen(self, client_ids: Collection[str]) -> dict[str, tuple[float, str]]:
        """``(last seen, transport)`` of each of ``client_ids`` that was seen."""
        ...


_MISSING: Any = object()

# Secondary indexes of the memory store: table -> index name -> the record's indexed value.
_INDEXES: dict[str, dict[str, Callable[[Any], Hashable]]] = {
    "clients": {"token_hash": lambda c: c.token_hash},
    "enrollment": {"token_hash": lambda e: e.token_hash},
    "tasks": {"client_id": lambda t: t.client_id, "round_id": lambda t: t.round_id},
    "updates": {
        "round_id": lambda u: u.round_id,
        "idempotency_key": lambda u: (u.client_id, u.idempotency_key),
        "quarantine": lambda u: u.quarantine is not None,
    },
    "secagg": {"round_stage": lambda m: (m.round_id, m.stage)},
}


class MemoryStore:
    """The Store Protocol in dictionaries, guarded by one re-entrant lock.

    Inside a transaction every write logs how to undo itself; when the outermost block
    raises, the log is replayed backwards, so a transaction is all-or-nothing like the SQL
    store's at the cost of its own writes, not of the whole state. Secondary indexes (token
    hash; tasks by client and round; updates by round and idempotency key) keep the lookups
    made for every request independent of how many records there are.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._undo: list[Callable[[], None]] | None = None
        self._tables: dict[str, dict[Any, Any]] = {
            name: {}
            for name in (
                "clients",
                "rounds",
                "tasks",
                "updates",
                "models",
                "reports",
                "secagg",
                "enrollment",
            )
        }
        self._logs: dict[str, list[Any]] = {"rejections": [], "events": [], "alerts": []}
        self._seen: dict[str, tuple[float, str]] = {}
        self._index: dict[str, dict[str, dict[Hashable, dict[Any, None]]]] = {
            table: {name: {} for name in indexes} for table, indexes in _INDEXES.items()
        }

    @contextmanager
    def _tx(self) -> Iterator[None]:
        with self._lock:
            if self._undo is not None:  # nested: the outermost block commits or rolls back
                yield
                return
            self._undo = []
            try:
                yield
            except BaseException:
                undo, self._undo = self._undo, None
                for step in reversed(undo):
                    step()
                raise
            finally:
                self._undo = None

    def transaction(self) -> AbstractContextManager[None]:
        return self._tx()

    def close(self) -> None:
        pass

    # writes (call them inside _tx) and index lookups
    def _put(self, table: str, key: Any, record: Any) -> None:
        old = self._tables[table].get(key, _MISSING)
        self._write(table, key, old, record)
        if self._undo is not None:
            self._undo.append(lambda: self._write(table, key, record, old))

    def _write(self, table: str, key: Any, old: Any, new: Any) -> None:
        rows = self._tables[table]
        if new is _MISSING:
            del rows[key]
        else:
            rows[key] = new
        for name, value_of in _INDEXES.get(table, {}).items():
            index = self._index[table][name]
            before = _MISSING if old is _MISSING else value_of(old)
            after = _MISSING if new is _MISSING else value_of(new)
            if before is not _MISSING and after is not _MISSING and before == after:
                continue
            if before is not _MISSING:
                del index[before][key]
                if not index[before]:
                    del index[before]
            if after is _MISSING:
                continue
            if old is _MISSING:  # a new record: the last of its bucket, as of the table
                index.setdefault(after, {})[key] = None
            else:  # moved to another bucket (rare): rebuilt in insertion order
                index[after] = {k: None for k, r in rows.items() if value_of(r) == after}

    def _append(self, log: str, record: Any) -> None:
        records = self._logs[log]
        records.append(record)
        if self._undo is not None:
            self._undo.append(records.pop)

    def _lookup(self, table: str, index: str, value: Hashable) -> list[Any]:
        rows = self._tables[table]
        return [rows[key] for key in self._index[table][index].get(value, ())]

    def _save(self, table: str, key: Any, record: Any, what: str) -> None:
        with self._tx():
            if key not in self._tables[table]:
                raise NotFoundError(f"no {what} {key!r}", code=f"{what}_not_found")
            self._put(table, key, record)

    # clients
    def add_client(self, client: ClientRecord) -> None:
        with self._tx():
            if client.client_id in self._tables["clients"] or self.find_client(client.token_hash):
                raise ConflictError(f"client {client.client_id!r} exists", code="duplicate")
            self._put("clients", client.client_id, client)

    def get_client(self, client_id: str) -> ClientRecord | None:
        with self._lock:
            client: ClientRecord | None = self._tables["clients"].get(client_id)
            return client

    def find_client(self, token_hash: str) -> ClientRecord | None:
        with self._lock:
            found: list[ClientRecord] = self._lookup("clients", "token_hash", token_hash)
            return found[0] if found else None

    def list_clients(self) -> list[ClientRecord]:
        with self._lock:
            return list(self._tables["clients"].values())

    def count_clients(self) -> int:
        with self._lock:
            return len(self._tables["clients"])

    def save_client(self, client: ClientRecord) -> None:
        self._save("clients", client.client_id, client, "client")

    def set_client_token(self, client_id: str, token_hash: str) -> ClientRecord:
        with self._tx():
            client = self.get_client(client_id)
            if client is None:
                raise NotFoundError(f"no client {client_id!r}", code="client_not_found")
            if self.find_client(token_hash) is not None:
                raise ConflictError("that token hash belongs to a client", code="duplicate")
            rotated = dataclasses.replace(client, token_hash=token_hash)
            self._put("clients", client_id, rotated)
            return rotated

    # enrollment tokens
    def add_enrollment_token(self, token: EnrollmentTokenRecord) -> None:
        with self._tx():
            if token.token_id in self._tables["enrollment"] or self.find_enrollment_token(
                token.token_hash
            ):
                raise ConflictError(f"enrollment token {token.token_id!r} exists", code="duplicate")
            self._put("enrollment", token.token_id, token)

    def get_enrollment_token(self, token_id: str) -> EnrollmentTokenRecord | None:
        with self._lock:
            token: EnrollmentTokenRecord | None = self._tables["enrollment"].get(token_id)
            return token

    def find_enrollment_token(self, token_hash: str) -> EnrollmentTokenRecord | None:
        with self._lock:
            found: list[EnrollmentTokenRecord] = self._lookup(
                "enrollment", "token_hash", token_hash
            )
            return found[0] if found else None

    def list_enrollment_tokens(self) -> list[EnrollmentTokenRecord]:
        with self._lock:
            return list(self._tables["enrollment"].values())

    def save_enrollment_token(self, token: EnrollmentTokenRecord) -> None:
        self._save("enrollment", token.token_id, token, "enrollment_token")

    # rounds
    def add_round(self, round_: RoundRecord) -> RoundRecord:
        with self._tx():
            rounds = self._tables["rounds"]
            stored = dataclasses.replace(round_, round_id=max(rounds, default=0) + 1)
            self._put("rounds", stored.round_id, stored)
            return stored

    def get_round(self, round_id: int) -> RoundRecord | None:
        with self._lock:
            found: RoundRecord | None = self._tables["rounds"].get(round_id)
            return found

    def list_rounds(self, states: Collection[str] | None = None) -> list[RoundRecord]:
        with self._lock:
            rounds = self._tables["rounds"].values()
            chosen = rounds if states is None else [r for r in rounds if r.state in states]
            return sorted(chosen, key=lambda r: r.round_id)

    def save_round(self, round_: RoundRecord) -> None:
        self._save("rounds", round_.round_id, round_, "round")

    # tasks
    def add_task(self, task: TaskRecord) -> None:
        with self._tx():
            if task.task_id in self._tables["tasks"]:
                raise ConflictError(f"task {task.task_id!r} exists", code="duplicate")
            self._put("tasks", task.task_id, task)

    def get_task(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            task: TaskRecord | None = self._tables["tasks"].get(task_id)
            return task

    def list_tasks(
        self,
        *,
        client_id: str | None = None,
        round_id: int | None = None,
        status: str | None = None,
    ) -> list[TaskRecord]:
        with self._lock:
            tasks: list[TaskRecord]
            if client_id is not None:
                tasks = self._lookup("tasks", "client_id", client_id)
            elif round_id is not None:
                tasks = self._lookup("tasks", "round_id", round_id)
            else:
                tasks = list(self._tables["tasks"].values())
            return [
                t
                for t in tasks
                if (client_id is None or t.client_id == client_id)
                and (round_id is None or t.round_id == round_id)
                and (status is None or t.status == status)
            ]

    def count_tasks(self, *, round_id: int, status: str | None = None) -> int:
        with self._lock:
            tasks = self._lookup("tasks", "round_id", round_id)
            return sum(1 for t in tasks if status is None or t.status == status)

    def save_task(self, task: TaskRecord) -> None:
        self._save("tasks", task.task_id, task, "task")

    # updates
    def add_update(self, update: UpdateRecord) -> None:
        with self._tx():
            key = (update.round_id, update.client_id)
            if key in self._tables["updates"]:
                raise ConflictError(
                    f"client {update.client_id!r} already has an update in round {update.round_id}",
                    code="duplicate_update",
                )
            if self.find_update(update.client_id, update.idempotency_key):
                raise ConflictError("idempotency key already used", code="idempotency_conflict")
            self._put("updates", key, update)

    # secure-aggregation messages
    def add_secagg(self, record: SecAggRecord) -> None:
        with self._tx():
            key = (record.round_id, record.stage, record.client_id)
            if key in self._tables["secagg"]:
                raise ConflictError(
                    f"client {record.client_id!r} already answered stage {record.stage} of "
                    f"round {record.round_id}",
                    code="secagg_duplicate",
                )
            self._put("secagg", key, record)

    def get_secagg(self, round_id: int, stage: str, client_id: str) -> SecAggRecord | None:
        with self._lock:
            found: SecAggRecord | None = self._tables["secagg"].get((round_id, stage, client_id))
            return found

    def list_secagg(self, round_id: int, stage: str) -> list[SecAggRecord]:
        with self._lock:
            found: list[SecAggRecord] = self._lookup("secagg", "round_stage", (round_id, stage))
            return found

    def get_update(self, round_id: int, client_id: str) -> UpdateRecord | None:
        with self._lock:
            found: UpdateRecord | None = self._tables["updates"].get((round_id, client_id))
            return found

    def find_update(self, client_id: str, idempotency_key: str) -> UpdateRecord | None:
        with self._lock:
            found: list[UpdateRecord] = self._lookup(
                "updates", "idempotency_key", (client_id, idempotency_key)
            )
            return found[0] if found else None

    def list_updates(self, round_id: int) -> list[UpdateRecord]:
        with self._lock:
            return self._lookup("updates", "round_id", round_id)

    def count_updates(self, round_id: int | None = None) -> int:
        with self._lock:
            if round_id is None:
                return len(self._tables["updates"])
            return len(self._index["updates"]["round_id"].get(round_id, ()))

    def save_update(self, update: UpdateRecord) -> None:
        self._save("updates", (update.round_id, update.client_id), update, "update")

    def list_quarantined_updates(
        self, client_id: str | None = None, *, released: bool = False
    ) -> list[UpdateRecord]:
        with self._lock:
            found: list[UpdateRecord] = self._lookup("updates", "quarantine", True)
            return [
                u
                for u in found
                if (client_id is None or u.client_id == client_id) and (released or u.quarantined)
            ]

    # rejections
    def add_rejection(self, rejection: RejectionRecord) -> None:
        with self._tx():
            self._append("rejections", rejection)

    def rejection_counts(self, *, since: float | None = None) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for r in self._logs["rejections"]:
                if since is None or r.at >= since:
                    counts[r.reason] = counts.get(r.reason, 0) + 1
            return counts

    # models
    def add_model(self, model: ModelRecord) -> None:
        with self._tx():
            models = self._tables["models"]
            if model.version in models or any(m.seq == model.seq for m in models.values()):
                raise ConflictError(f"model {model.version!r} exists", code="duplicate")
            self._put("models", model.version, model)

    def get_model(self, version: str) -> ModelRecord | None:
        with self._lock:
            model: ModelRecord | None = self._tables["models"].get(version)
            return model

    def list_models(self, *, stage: str | None = None) -> list[ModelRecord]:
        with self._lock:
            models = self._tables["models"].values()
            chosen = models if stage is None else [m for m in models if m.stage == stage]
            return sorted(chosen, key=lambda m: m.seq)

    def save_model(self, model: ModelRecord) -> None:
        self._save("models", model.version, model, "model")

    def add_model_event(self, event: ModelEvent) -> ModelEvent:
        with self._tx():
            stored = dataclasses.replace(event, seq=len(self._logs["events"]) + 1)
            self._append("events", stored)
            return stored

    def list_model_events(self, version: str | None = None) -> list[ModelEvent]:
        with self._lock:
            return [e for e in self._logs["events"] if version is None or e.version == version]

    # reports
    def add_report(self, report: ReportRecord) -> ReportRecord:
        with self._tx():
            stored = dataclasses.replace(report, report_id=len(self._tables["reports"]) + 1)
            self._put("reports", stored.report_id, stored)
            return stored

    def list_reports(
        self, *, kind: str | None = None, model_version: str | None = None
    ) -> list[ReportRecord]:
        with self._lock:
            return [
                r
                for r in self._tables["reports"].values()
                if (kind is None or r.kind == kind)
                and (model_version is None or r.model_version == model_version)
            ]

    # alerts
    def add_alert(self, alert: AlertRecord) -> AlertRecord:
        with self._tx():
            stored = dataclasses.replace(alert, alert_id=len(self._logs["alerts"]) + 1)
            self._append("alerts", stored)
            return stored

    def list_alerts(
        self, *, kind: str | None = None, since: float | None = None
    ) -> list[AlertRecord]:
        with self._lock:
            return [
                a
                for a in self._logs["alerts"]
                if (kind is None or a.kind == kind) and (since is None or a.created_at >= since)
            ]

    # pages
    def page_clients(self, *, offset: int, limit: int) -> list[ClientRecord]:
        with self._lock:
            return list(itertools.islice(self._tables["clients"].values(), offset, offset + limit))

    def page_rounds(self, *, offset: int, limit: int) -> list[RoundRecord]:
        with self._lock:
            rounds = sorted(self._tables["rounds"].values(), key=lambda r: -r.round_id)
            return rounds[offset : offset + limit]

    def count_rounds(self) -> int:
        with self._lock:
            return len(self._tables["rounds"])

    def page_models(self, *, offset: int, limit: int) -> list[ModelRecord]:
        with self._lock:
            models = sorted(self._tables["models"].values(), key=lambda m: -m.seq)
            return models[offset : offset + limit]

    def count_models(self) -> int:
        with self._lock:
            return len(self._tables["models"])

    def page_alerts(self, *, offset: int, limit: int) -> list[AlertRecord]:
        with self._lock:
            return self._logs["alerts"][::-1][offset : offset + limit]

    def count_alerts(self) -> int:
        with self._lock:
            return len(self._logs["alerts"])

    def page_reports(self, *, kind: str, offset: int, limit: int) -> list[ReportRecord]:
        with self._lock:
            reports = [r for r in self._tables["reports"].values() if r.kind == kind]
            return reports[::-1][offset : offset + limit]

    def count_reports(self, *, kind: str) -> int:
        with self._lock:
            return sum(1 for r in self._tables["reports"].values() if r.kind == kind)

    def latest_updates(self, client_ids: Collection[str]) -> dict[str, UpdateRecord]:
        wanted = set(client_ids)
        latest: dict[str, UpdateRecord] = {}
        with self._lock:
            for update in self._tables["updates"].values():  # in the order they arrived
                if update.client_id in wanted:
                    latest[update.client_id] = update
        return latest

    def set_client_seen(self, client_id: str, at: float, transport: str) -> None:
        with self._lock:
            self._seen[client_id] = (float(at), transport)

    def clients_seen(self, client_ids: Collection[str]) -> dict[str, tuple[float, str]]:
        with self._lock:
            return {c: self._seen[c] for c in client_ids if c in self._seen}


def open_store(url: str) -> Store:
    """A store from a URL: ``memory:``, ``sqlite:///path``, a plain file path (SQLite), or
    ``postgresql://...`` / ``postgres://...`` (PostgreSQL, a libpq URL)."""
    from coordinator.sqlite_store import SQLiteStore

    if url in ("memory:", ":memory:"):
        return MemoryStore()
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from coordinator.postgres_store import PostgresStore
        except ImportError as exc:
            raise ConfigError(
                f"{url.split(':', 1)[0]}:// needs psycopg and psycopg_pool "
                f"(pip install 'fedge[postgres]'): {exc}"
            ) from exc
        return PostgresStore(url)
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url[len("sqlite:///") :]))
    if "://" in url:
        raise ConfigError(
            f"unsupported database URL {url!r}; use sqlite:///PATH, a path or postgresql://..."
        )
    return SQLiteStore(Path(url))
