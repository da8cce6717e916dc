"""The Store contract: ONE suite, run against every implementation (memory, SQLite and a
real PostgreSQL server started by the test session)."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from coordinator import postgres_store, sqlite_store
from coordinator.artifacts import ArtifactStore
from coordinator.config import RoundConfig
from coordinator.errors import ConflictError, NotFoundError, StateError
from coordinator.postgres_store import PostgresStore
from coordinator.records import (
    AlertRecord,
    ClientRecord,
    EnrollmentTokenRecord,
    ModelEvent,
    ModelRecord,
    RejectionRecord,
    ReportRecord,
    RoundRecord,
    TaskRecord,
    UpdateRecord,
)
from coordinator.sqlite_store import SQLiteStore
from coordinator.store import MemoryStore, Store, open_store
from fedge.errors import ConfigError
from fedge.messages import TaskConfig
from tests.support.postgres import PostgresCluster

STORES: dict[str, Callable[[Path], Store]] = {
    "memory": lambda _: MemoryStore(),
    "sqlite": lambda directory: SQLiteStore(directory / "s.db"),
}


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store
    if request.param == "postgres":
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        made = PostgresStore(cluster.new_database())
    else:
        made = STORES[request.param](tmp_path)
    yield made
    made.close()


def _client(n: int) -> ClientRecord:
    return ClientRecord(f"c{n}", f"hash{n}", 100.0 + n, region="north", metadata={"os": "x"})


def _round(state: str = "open") -> RoundRecord:
    return RoundRecord(
        round_id=0,
        state=state,  # type: ignore[arg-type]
        config=RoundConfig(clients_per_round=3, min_clients=2, aggregator="median"),
        opened_at=10.0,
    )


def _task(task_id: str, client: str = "c1", round_id: int | None = 1) -> TaskRecord:
    return TaskRecord(
        task_id=task_id,
        kind="train",
        client_id=client,
        model_version="v1",
        config=TaskConfig(epochs=2, batch_size=8),
        created_at=1.0,
        deadline=99.0,
        round_id=round_id,
    )


def _update(round_id: int, client: str, key: str) -> UpdateRecord:
    return UpdateRecord(
        round_id=round_id,
        client_id=client,
        task_id=f"r{round_id}-{client}",
        idempotency_key=key,
        sha256="ab" * 32,
        size=100,
        num_examples=7,
        l2_norm=0.5,
        received_at=5.0,
        metrics={"loss": 0.25},
    )


def _model(version: str, seq: int, stage: str = "candidate") -> ModelRecord:
    return ModelRecord(
        version=version,
        seq=seq,
        stage=stage,  # type: ignore[arg-type]
        created_at=float(seq),
        parent=None if seq == 1 else f"v{seq - 1}",
        slice_metrics={"north": {"accuracy": 0.5}},
        artifacts={"weights.safetensors": "cd" * 32},
    )


def test_clients_roundtrip_and_lookup_by_token_hash(store: Store) -> None:
    store.add_client(_client(1))
    store.add_client(_client(2))
    assert store.get_client("c1") == _client(1)
    assert store.find_client("hash2") == _client(2)
    assert store.find_client("nope") is None
    assert [c.client_id for c in store.list_clients()] == ["c1", "c2"]
    assert store.count_clients() == 2
    assert store.get_client("c1").metadata["os"] == "x"  # type: ignore[union-attr]


def test_save_client_replaces_it_in_place(store: Store) -> None:
    store.add_client(_client(1))
    store.add_client(_client(2))
    revoked = dataclasses.replace(_client(1), revoked_at=5.0)
    store.save_client(revoked)
    assert store.get_client("c1") == revoked
    assert store.find_client("hash1") == revoked
    assert [c.client_id for c in store.list_clients()] == ["c1", "c2"]
    with pytest.raises(NotFoundError):
        store.save_client(dataclasses.replace(_client(3), revoked_at=1.0))


def test_duplicate_client_id_or_token_conflicts(store: Store) -> None:
    store.add_client(_client(1))
    with pytest.raises(ConflictError):
        store.add_client(_client(1))
    with pytest.raises(ConflictError):
        store.add_client(dataclasses.replace(_client(9), token_hash="hash1"))
    assert store.count_clients() == 1


def test_rounds_get_sequential_ids_and_roundtrip(store: Store) -> None:
    first = store.add_round(_round())
    second = store.add_round(_round())
    assert (first.round_id, second.round_id) == (1, 2)
    again = store.get_round(1)
    assert again == first
    assert again is not None
    assert again.config.aggregator == "median"


def test_save_round_replaces_and_list_filters_by_state(store: Store) -> None:
    stored = store.add_round(_round())
    store.add_round(_round())
    changed = dataclasses.replace(
        stored, state="collecting", selected=("c1", "c2"), deadline=50.0, measurements={"n": 2.0}
    )
    store.save_round(changed)
    assert store.get_round(1) == changed
    assert [r.round_id for r in store.list_rounds(["collecting"])] == [1]
    assert [r.round_id for r in store.list_rounds()] == [1, 2]
    with pytest.raises(NotFoundError):
        store.save_round(dataclasses.replace(stored, round_id=99))


def test_tasks_filter_and_save(store: Store) -> None:
    store.add_task(_task("t1", "c1", 1))
    store.add_task(_task("t2", "c2", 1))
    store.add_task(_task("t3", "c1", None))
    assert [t.task_id for t in store.list_tasks(client_id="c1")] == ["t1", "t3"]
    assert [t.task_id for t in store.list_tasks(round_id=1)] == ["t1", "t2"]
    done = dataclasses.replace(_task("t1", "c1", 1), status="completed", completed_at=3.0)
    store.save_task(done)
    assert store.get_task("t1") == done
    assert [t.task_id for t in store.list_tasks(client_id="c1", status="pending")] == ["t3"]
    assert store.count_tasks(round_id=1) == 2
    assert store.count_tasks(round_id=1, status="pending") == 1
    assert store.count_tasks(round_id=1, status="completed") == 1
    assert store.count_tasks(round_id=2) == 0
    with pytest.raises(ConflictError):
        store.add_task(_task("t2"))
    with pytest.raises(NotFoundError):
        store.save_task(_task("zz"))


def test_tasks_keep_insertion_order_when_saved_under_another_client_or_round(
    store: Store,
) -> None:
    for task_id, client, round_id in [("t1", "c1", 1), ("t2", "c2", 2), ("t3", "c1", 1)]:
        store.add_task(_task(task_id, client, round_id))
    store.save_task(_task("t3", "c2", 2))
    store.save_task(_task("t1", "c2", 2))
    assert [t.task_id for t in store.list_tasks(client_id="c2")] == ["t1", "t2", "t3"]
    assert [t.task_id for t in store.list_tasks(round_id=2)] == ["t1", "t2", "t3"]
    assert store.list_tasks(client_id="c1") == []
    assert store.list_tasks(round_id=1) == []


def test_updates_are_unique_per_round_client_and_key(store: Store) -> None:
    store.add_update(_update(1, "c1", "k1"))
    store.add_update(_update(1, "c2", "k2"))
    store.add_update(_update(2, "c1", "k3"))
    with pytest.raises(ConflictError) as dup:
        store.add_update(_update(1, "c1", "k9"))
    assert dup.value.code == "duplicate_update"
    with pytest.raises(ConflictError) as key:
        store.add_update(_update(3, "c1", "k1"))
    assert key.value.code == "idempotency_conflict"
    assert [u.client_id for u in store.list_updates(1)] == ["c1", "c2"]
    assert store.count_updates() == 3
    assert [store.count_updates(r) for r in (1, 2, 3)] == [2, 1, 0]
    assert store.get_update(2, "c1") == _update(2, "c1", "k3")
    assert store.find_update("c1", "k1") == _update(1, "c1", "k1")
    assert store.find_update("c2", "k1") is None


def test_saved_quarantine_is_listed_until_released(store: Store) -> None:
    for round_id, client, key in [(1, "c1", "k1"), (1, "c2", "k2"), (2, "c1", "k3")]:
        store.add_update(_update(round_id, client, key))
    assert store.list_quarantined_updates() == []
    held = dataclasses.replace(_update(1, "c1", "k1"), quarantine="anomalies in pixels")
    later = dataclasses.replace(_update(2, "c1", "k3"), quarantine="anomalies in fare")
    other = dataclasses.replace(_update(1, "c2", "k2"), quarantine="anomalies in miles")
    for update in (held, other, later):
        store.save_update(update)
    assert store.get_update(1, "c1") == held
    assert store.list_quarantined_updates() == [held, other, later]
    assert store.list_quarantined_updates("c1") == [held, later]
    released = dataclasses.replace(held, released_at=9.0)
    store.save_update(released)
    assert not released.quarantined
    assert later.quarantined
    assert store.list_quarantined_updates("c1") == [later]
    assert store.list_quarantined_updates("c1", released=True) == [released, later]
    assert store.find_update("c1", "k1") == released
    assert [u.client_id for u in store.list_updates(1)] == ["c1", "c2"]
    with pytest.raises(NotFoundError) as missing:
        store.save_update(_update(3, "c1", "k9"))
    assert missing.value.code == "update_not_found"
    assert store.count_updates() == 3


def test_a_failed_transaction_keeps_the_quarantine_unchanged(store: Store) -> None:
    store.add_update(_update(1, "c1", "k1"))

    def abort() -> None:
        with store.transaction():
            store.save_update(dataclasses.replace(_update(1, "c1", "k1"), quarantine="bad"))
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        abort()
    assert store.get_update(1, "c1") == _update(1, "c1", "k1")
    assert store.list_quarantined_updates(released=True) == []


def test_rejection_counts_by_reason_and_time(store: Store) -> None:
    for at, reason in [(1.0, "non_finite"), (2.0, "norm_exceeded"), (3.0, "non_finite")]:
        store.add_rejection(RejectionRecord(at=at, reason=reason, detail="d", client_id="c1"))
    assert store.rejection_counts() == {"non_finite": 2, "norm_exceeded": 1}
    assert store.rejection_counts(since=2.5) == {"non_finite": 1}


def test_models_order_stage_filter_and_save(store: Store) -> None:
    store.add_model(_model("v1", 1, "production"))
    store.add_model(_model("v2", 2))
    assert [m.version for m in store.list_models()] == ["v1", "v2"]
    assert [m.version for m in store.list_models(stage="production")] == ["v1"]
    promoted = dataclasses.replace(_model("v2", 2), stage="production", promoted_at=9.0)
    store.save_model(promoted)
    assert store.get_model("v2") == promoted
    assert store.get_model("v2").slice_metrics["north"]["accuracy"] == 0.5  # type: ignore[union-attr]
    with pytest.raises(ConflictError):
        store.add_model(_model("v1", 3))
    with pytest.raises(NotFoundError):
        store.save_model(_model("v9", 9))


def test_model_events_get_sequence_numbers(store: Store) -> None:
    first = store.add_model_event(ModelEvent(0, "v1", "registered", 1.0))
    second = store.add_model_event(ModelEvent(0, "v2", "promoted", 2.0, previous="v1"))
    assert (first.seq, second.seq) == (1, 2)
    assert store.list_model_events("v2") == [second]
    assert store.list_model_events() == [first, second]


def test_reports_get_ids_and_filter(store: Store) -> None:
    stats = store.add_report(ReportRecord(0, "stats", "c1", "t1", 1.0, document={"num_rows": 3}))
    evaluation = store.add_report(
        ReportRecord(0, "evaluation", "c1", "t2", 2.0, "v1", {"metrics": {"accuracy": 0.5}})
    )
    assert (stats.report_id, evaluation.report_id) == (1, 2)
    assert store.list_reports() == [stats, evaluation]
    assert store.list_reports(kind="stats") == [stats]
    assert store.list_reports(kind="evaluation", model_version="v1") == [evaluation]
    assert store.list_reports(model_version="v2") == []


def test_alerts_get_ids_and_filter(store: Store) -> None:
    a = store.add_alert(AlertRecord(0, "round_failed", "warning", "m", 1.0, round_id=1))
    b = store.add_alert(AlertRecord(0, "data_drift", "warning", "m", 5.0, details={"psi": 0.4}))
    assert (a.alert_id, b.alert_id) == (1, 2)
    assert store.list_alerts(kind="data_drift") == [b]
    assert store.list_alerts(since=2.0) == [b]
    assert store.list_alerts()[1].details["psi"] == 0.4


def test_transaction_is_all_or_nothing(store: Store) -> None:
    class Boom(Exception):
        pass

    def failing_transaction() -> None:
        with store.transaction():
            store.add_client(_client(1))
            store.add_round(_round())
            raise Boom

    with pytest.raises(Boom):
        failing_transaction()
    assert store.count_clients() == 0
    assert store.list_rounds() == []
    with store.transaction():
        store.add_client(_client(1))
        with store.transaction():
            store.add_round(_round())
    assert store.count_clients() == 1
    assert len(store.list_rounds()) == 1


def test_a_rolled_back_transaction_leaves_nothing_to_find(store: Store) -> None:
    class Boom(Exception):
        pass

    store.add_client(_client(1))
    store.add_task(_task("t1", "c1", 1))
    store.add_update(_update(1, "c1", "k1"))

    def failing_transaction() -> None:
        with store.transaction():
            store.add_client(_client(2))
            store.save_task(dataclasses.replace(_task("t1", "c2", 2), status="completed"))
            store.add_task(_task("t2", "c2", 1))
            store.add_update(_update(1, "c2", "k2"))
            store.add_rejection(RejectionRecord(at=1.0, reason="non_finite", detail="d"))
            store.add_alert(AlertRecord(0, "round_failed", "warning", "m", 1.0, round_id=1))
            raise Boom

    with pytest.raises(Boom):
        failing_transaction()
    assert store.find_client("hash2") is None
    assert [c.client_id for c in store.list_clients()] == ["c1"]
    assert store.get_task("t1") == _task("t1", "c1", 1)
    assert [t.task_id for t in store.list_tasks(client_id="c1", status="pending")] == ["t1"]
    assert [t.task_id for t in store.list_tasks(round_id=1)] == ["t1"]
    assert store.list_tasks(client_id="c2") == []
    assert store.list_tasks(round_id=2) == []
    assert store.find_update("c2", "k2") is None
    assert store.count_updates(1) == 1
    assert [u.client_id for u in store.list_updates(1)] == ["c1"]
    assert store.rejection_counts() == {}
    assert store.list_alerts() == []
    store.add_update(_update(1, "c2", "k2"))  # the key is free again
    assert store.count_updates(1) == 2


def test_concurrent_writers_lose_nothing(store: Store) -> None:
    def write(worker: int) -> None:
        for i in range(20):
            store.add_update(_update(1, f"c{worker}-{i}", f"k{worker}-{i}"))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(store.list_updates(1)) == 80


# Implementation-specific guarantees --------------------------------------------------------


def test_sqlite_store_is_durable_across_reopen(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "s.db")
    first.add_client(_client(1))
    first.add_round(_round())
    first.close()
    again = SQLiteStore(tmp_path / "s.db")
    assert again.get_client("c1") == _client(1)
    assert again.add_round(_round()).round_id == 2
    assert again.schema_version == len(sqlite_store.MIGRATIONS)
    again.close()


def test_sqlite_store_uses_wal_and_full_sync(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    store.close()
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    versions = conn.execute("SELECT version FROM schema_migrations").fetchall()
    conn.close()
    assert versions == [(v,) for v, _ in sqlite_store.MIGRATIONS]


def test_sqlite_store_migrates_an_older_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(sqlite_store, "MIGRATIONS", sqlite_store.MIGRATIONS[:1])
        old = SQLiteStore(tmp_path / "s.db")
        old.add_task(_task("t1", "c1", 1))
        assert old.schema_version == 1
        old.close()
    store = SQLiteStore(tmp_path / "s.db")
    assert store.schema_version == len(sqlite_store.MIGRATIONS)
    assert [t.task_id for t in store.list_tasks(round_id=1, status="pending")] == ["t1"]
    indexes = store._conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
    assert "tasks_by_round" in {row[0] for row in indexes}
    store.close()


def test_open_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store("memory:"), MemoryStore)
    sqlite_store = open_store(f"sqlite:///{tmp_path}/a.db")
    assert isinstance(sqlite_store, SQLiteStore)
    assert sqlite_store.path == tmp_path / "a.db"
    sqlite_store.close()
    with pytest.raises(StateError, match="cannot use the PostgreSQL database"):
        open_store("postgresql://fedge:secret@127.0.0.1:1/fedge?connect_timeout=2")
    with pytest.raises(ConfigError, match="unsupported database URL"):
        open_store("mysql://db")


def test_artifact_store_is_content_addressed(tmp_path: Path) -> None:
    artifacts = ArtifactStore(tmp_path / "a")
    digest = artifacts.put_bytes(b"hello")
    assert digest == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert artifacts.put_bytes(b"hello") == digest
    assert artifacts.get_bytes(digest) == b"hello"
    (tmp_path / "f").write_bytes(b"hello")
    assert artifacts.put_file(tmp_path / "f") == digest
    assert artifacts.size(digest) == 5
    assert list((tmp_path / "a" / "tmp").iterdir()) == []
    with pytest.raises(NotFoundError):
        artifacts.get_bytes("00" * 32)
    with pytest.raises(NotFoundError, match="not a sha256"):
        artifacts.path("../../etc/passwd")


def test_enrollment_tokens_round_trip_and_are_found_by_hash(store: Store) -> None:
    token = EnrollmentTokenRecord("e-1", "ehash1", 5.0, label="line 4", expires_at=65.0,
                                  max_uses=3)  # fmt: skip
    store.add_enrollment_token(token)
    store.add_enrollment_token(EnrollmentTokenRecord("e-2", "ehash2", 6.0))
    with pytest.raises(ConflictError):
        store.add_enrollment_token(dataclasses.replace(token, token_id="e-3"))  # same hash
    with pytest.raises(ConflictError):
        store.add_enrollment_token(dataclasses.replace(token, token_hash="other"))  # same id
    assert store.get_enrollment_token("e-1") == token
    assert store.find_enrollment_token("ehash2") == EnrollmentTokenRecord("e-2", "ehash2", 6.0)
    assert store.find_enrollment_token("nope") is None
    used = dataclasses.replace(token, uses=2, revoked_at=9.0)
    store.save_enrollment_token(used)
    assert [t.token_id for t in store.list_enrollment_tokens()] == ["e-1", "e-2"]
    assert store.get_enrollment_token("e-1") == used
    with pytest.raises(NotFoundError):
        store.save_enrollment_token(EnrollmentTokenRecord("e-9", "ehash9", 1.0))


def test_a_client_token_hash_is_replaced_and_the_old_one_no_longer_finds_it(
    store: Store,
) -> None:
    store.add_client(_client(1))
    store.add_client(_client(2))
    rotated = store.set_client_token("c1", "hash-new")
    assert rotated == dataclasses.replace(_client(1), token_hash="hash-new")
    assert store.find_client("hash1") is None
    assert store.find_client("hash-new") == rotated
    assert store.get_client("c1") == rotated
    with pytest.raises(ConflictError):
        store.set_client_token("c1", "hash2")  # another client's
    assert store.get_client("c1") == rotated
    with pytest.raises(NotFoundError):
        store.set_client_token("c9", "hash9")


def test_open_store_opens_postgresql_urls(postgres: PostgresCluster) -> None:
    url = postgres.new_database()
    for scheme_url in (url, url.replace("postgresql://", "postgres://", 1)):
        store = open_store(scheme_url)
        assert isinstance(store, PostgresStore)
        store.add_client(_client(len(store.list_clients()) + 1))
        store.close()
    again = PostgresStore(url)
    assert [c.client_id for c in again.list_clients()] == ["c1", "c2"]
    again.close()


def test_an_unreachable_postgresql_server_is_a_state_error_without_the_password() -> None:
    with pytest.raises(StateError, match="cannot use the PostgreSQL database") as raised:
        PostgresStore("postgresql://fedge:hunter2@127.0.0.1:1/fedge", connect_timeout_s=2)
    assert "hunter2" not in str(raised.value)
    assert "postgresql://fedge:***@127.0.0.1:1/fedge" in str(raised.value)


def test_postgres_store_is_durable_across_reopen_and_records_its_migrations(
    postgres: PostgresCluster,
) -> None:
    url = postgres.new_database()
    first = PostgresStore(url)
    first.add_client(_client(1))
    first.add_round(_round())
    first.close()
    again = PostgresStore(url)
    assert again.get_client("c1") == _client(1)
    assert again.add_round(_round()).round_id == 2
    assert again.schema_version == len(postgres_store.MIGRATIONS)
    again.close()
    with psycopg.connect(url) as conn:
        versions = conn.execute("SELECT version FROM schema_migrations ORDER BY version")
        assert versions.fetchall() == [(v,) for v, _ in postgres_store.MIGRATIONS]


def test_postgres_store_migrates_an_older_database(
    postgres: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres.new_database()
    with monkeypatch.context() as patch:
        patch.setattr(postgres_store, "MIGRATIONS", postgres_store.MIGRATIONS[:1])
        old = PostgresStore(url)
        old.add_task(_task("t1", "c1", 1))
        assert old.schema_version == 1
        old.close()
    store = PostgresStore(url)
    assert store.schema_version == len(postgres_store.MIGRATIONS)
    assert [t.task_id for t in store.list_tasks(round_id=1, status="pending")] == ["t1"]
    store.add_update(dataclasses.replace(_update(1, "c1", "k1"), quarantine=None))
    assert store.count_updates(1) == 1
    with psycopg.connect(url) as conn:
        indexes = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'tasks'")
        assert "tasks_by_round" in {row[0] for row in indexes}
    store.close()


def test_two_postgres_stores_on_one_database_accept_each_update_exactly_once(
    postgres: PostgresCluster,
) -> None:
    """Two stores (two coordinator processes) racing on the same uploads and the same
    read-check-write transaction: one wins each, the other gets a ConflictError or sees
    the round already closed."""
    url = postgres.new_database()
    stores = [PostgresStore(url), PostgresStore(url)]
    round_id = stores[0].add_round(_round()).round_id
    accepted: list[str] = []
    conflicts: list[str] = []
    closed: list[int] = []
    barrier = threading.Barrier(4)

    def race(worker: int) -> None:
        store = stores[worker % 2]
        barrier.wait(timeout=10)
        for i in range(15):
            try:
                store.add_update(_update(round_id, f"c{i}", f"k{i}"))
                accepted.append(f"c{i}")
            except ConflictError:
                conflicts.append(f"c{i}")
        with store.transaction():
            current = store.get_round(round_id)
            assert current is not None
            if current.state == "open":
                store.save_round(dataclasses.replace(current, state="aggregating"))
                closed.append(worker)

    threads = [threading.Thread(target=race, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(accepted) == sorted(f"c{i}" for i in range(15))
    assert len(conflicts) == 3 * 15
    assert len(closed) == 1
    assert stores[1].count_updates(round_id) == 15
    assert stores[1].get_round(round_id).state == "aggregating"  # type: ignore[union-attr]
    for store in stores:
        store.close()


def test_a_conflict_inside_a_postgres_transaction_leaves_the_transaction_usable(
    postgres: PostgresCluster,
) -> None:
    store = PostgresStore(postgres.new_database())
    store.add_client(_client(1))
    with store.transaction():
        with pytest.raises(ConflictError):
            store.add_client(_client(1))
        store.add_client(_client(2))
    assert [c.client_id for c in store.list_clients()] == ["c1", "c2"]
    store.close()


def test_pages_read_one_slice_in_order_and_counts_cover_the_whole(store: Store) -> None:
    for n in range(1, 8):
        store.add_client(_client(n))
        store.add_round(_round())
        store.add_model(_model(f"v{n}", n))
        store.add_alert(AlertRecord(0, "round_failed", "warning", f"m{n}", float(n)))
        store.add_report(ReportRecord(0, "stats", f"c{n}", f"t{n}", float(n)))
    store.add_report(ReportRecord(0, "evaluation", "c1", "e1", 9.0, "v1"))
    assert [c.client_id for c in store.page_clients(offset=2, limit=3)] == ["c3", "c4", "c5"]
    assert [r.round_id for r in store.page_rounds(offset=0, limit=3)] == [7, 6, 5]
    assert [m.version for m in store.page_models(offset=5, limit=3)] == ["v2", "v1"]
    assert [a.message for a in store.page_alerts(offset=1, limit=2)] == ["m6", "m5"]
    assert [r.task_id for r in store.page_reports(kind="stats", offset=0, limit=2)] == ["t7", "t6"]
    assert store.page_reports(kind="evaluation", offset=1, limit=5) == []
    assert store.page_clients(offset=7, limit=5) == []
    counts = (store.count_rounds(), store.count_models(), store.count_alerts())
    assert counts == (7, 7, 7)
    assert (store.count_reports(kind="stats"), store.count_reports(kind="evaluation")) == (7, 1)


def test_latest_updates_are_each_clients_last(store: Store) -> None:
    store.add_update(_update(1, "c1", "k1"))
    store.add_update(_update(1, "c2", "k2"))
    last = dataclasses.replace(_update(2, "c1", "k3"), received_at=9.0)
    store.add_update(last)
    assert store.latest_updates(["c1", "c3"]) == {"c1": last}
    assert store.latest_updates(["c2"])["c2"].round_id == 1
    assert store.latest_updates([]) == {}


def test_clients_seen_keeps_each_clients_last_call_and_transport(store: Store) -> None:
    store.add_client(_client(1))
    assert store.clients_seen(["c1"]) == {}
    store.set_client_seen("c1", 10.0, "rest")
    store.set_client_seen("c2", 11.0, "grpc")
    store.set_client_seen("c1", 70.5, "grpc")
    assert store.clients_seen(["c1", "c2", "c3"]) == {"c1": (70.5, "grpc"), "c2": (11.0, "grpc")}
    assert store.clients_seen([]) == {}


def test_client_events_are_in_the_history_but_no_versions(store: Store) -> None:
    model_event = store.add_model_event(ModelEvent(0, "v1", "registered", 1.0))
    revoked = store.add_model_event(
        ModelEvent(0, "", "client_revoked", 2.0, detail="client c1", actor="admin:0123456789ab")
    )
    assert store.list_model_events("v1") == [model_event]
    assert store.list_model_events("") == [revoked]
    assert store.list_model_events()[-1].actor == "admin:0123456789ab"
