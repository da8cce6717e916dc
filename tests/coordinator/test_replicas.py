"""Coordinator replicas: two ``fedge-coordinator serve`` processes on one PostgreSQL
database and one artifact directory serve one fleet behind a round-robin client. Exactly
one of them ticks rounds (the leader lock, :mod:`coordinator.leadership`); SIGKILL of
either one mid-round loses no acknowledged update and commits no round twice."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import requests

from coordinator.artifacts import ArtifactStore
from coordinator.leadership import LEADER_LOCK_KEY, PostgresLeadership
from coordinator.postgres_store import PostgresStore
from tests.support.coordinator import (
    ServerProcess,
    bearer,
    delta,
    make_bundle,
    serve_command,
    start_server,
    stop_server,
    upload_headers,
    write_admin_token,
)
from tests.support.postgres import PostgresCluster

CLIENTS = 50
PER_ROUND = 10
ROUNDS = 10
LEADER_LINE = "this replica now runs the round ticks"


class Replicas:
    """The replicas' base URLs (a restarted one gets a new URL in the same slot)."""

    def __init__(self, servers: list[ServerProcess]) -> None:
        self.servers = servers
        self.lock = threading.Lock()

    def urls(self) -> list[str]:
        with self.lock:
            return [s.url for s in self.servers]


class RoundRobinDevice:
    """A device whose requests alternate between the replicas; a request that finds its
    replica gone (connection refused or reset) goes to the next one, the same request."""

    def __init__(self, replicas: Replicas, index: int) -> None:
        self.replicas = replicas
        self.turn = itertools.count(index)
        self.http = requests.Session()
        self.token = ""
        self.client_id = ""

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        for attempt in range(40):
            urls = self.replicas.urls()
            url = urls[next(self.turn) % len(urls)]
            try:
                return self.http.request(method, url + path, timeout=10, **kwargs)
            except requests.ConnectionError:
                time.sleep(0.05 * min(attempt, 4))
        raise AssertionError(f"no replica answered {method} {path}")

    def register(self) -> None:
        response = self.request("POST", "/v1/clients", json={"region": "north"})
        assert response.status_code == 201, response.text
        self.client_id = response.json()["client_id"]
        self.token = response.json()["token"]

    def poll(self) -> dict[str, Any] | None:
        response = self.request("GET", "/v1/tasks/next", headers=bearer(self.token))
        if response.status_code == 204:
            return None
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        return task

    def upload(self, task: dict[str, Any], seed: int) -> requests.Response:
        key = str(uuid.uuid4())  # kept across a retry on the other replica
        headers = upload_headers(self.token, task["task_id"], num_examples=10 + seed, key=key)
        body = delta(seed).to_bytes()
        path = f"/v1/rounds/{task['round_id']}/updates"
        return self.request("POST", path, data=body, headers=headers)


def leader_of(replicas: Replicas) -> int:
    """The slot of the replica whose current process took the leader lock last."""
    for _ in range(100):
        with replicas.lock:
            leading = [i for i, s in enumerate(replicas.servers) if LEADER_LINE in s.log()]
        if len(leading) == 1:
            return leading[0]
        time.sleep(0.1)
    raise AssertionError(f"expected one leader, found {leading}")


def test_two_replicas_commit_ten_rounds_exactly_once_through_sigkills(
    tmp_path: Path, postgres: PostgresCluster
) -> None:
    url = postgres.new_database()
    make_bundle(tmp_path / "bundle")
    command = serve_command(
        tmp_path, tmp_path / "bundle", write_admin_token(tmp_path),
        "--db", url, "--clients-per-round", str(PER_ROUND), "--min-clients", str(PER_ROUND),
        "--deadline-seconds", "60", "--retry-after", "1", "--tick-seconds", "0.1",
    )  # fmt: skip
    first = start_server(command, tmp_path)  # creates the shared key ring first
    replicas = Replicas([first, start_server(command, tmp_path)])
    acked: set[tuple[int, str]] = set()
    acked_lock = threading.Lock()
    kills: list[tuple[int, str]] = []  # (round, "leader" | "follower")
    leaders: list[int] = []  # the leading slot at each kill

    def kill_and_restart(slot: int, role: str, round_id: int) -> None:
        with replicas.lock:
            victim = replicas.servers[slot]
        stop_server(victim, signal.SIGKILL)
        kills.append((round_id, role))
        replacement = start_server(command, tmp_path)
        with replicas.lock:
            replicas.servers[slot] = replacement

    def after_ack(round_id: int) -> None:
        """Mid-round kills: the leader in round 3, the other replica in round 7, each once
        half the round's updates are acknowledged (other uploads are in flight)."""
        with acked_lock:
            count = sum(1 for r, _ in acked if r == round_id)
            due = {3: "leader", 7: "follower"}.get(round_id)
            if due is None or count != PER_ROUND // 2 or any(r == round_id for r, _ in kills):
                return
            kills.append((round_id, "pending"))
        leader = leader_of(replicas)
        leaders.append(leader)
        slot = leader if due == "leader" else 1 - leader
        kills.remove((round_id, "pending"))
        kill_and_restart(slot, due, round_id)

    devices = [RoundRobinDevice(replicas, i) for i in range(CLIENTS)]
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda d: d.register(), devices))

            def step(index: int) -> None:
                device = devices[index]
                task = device.poll()
                if task is None or task["kind"] != "train":
                    return
                response = device.upload(task, seed=index)
                assert response.status_code in (200, 201), response.text
                with acked_lock:
                    acked.add((task["round_id"], device.client_id))
                after_ack(task["round_id"])

            committed = _committed_rounds(url)
            deadline = time.monotonic() + 90
            while committed() < ROUNDS:
                assert time.monotonic() < deadline, f"only {committed()} rounds committed"
                list(pool.map(step, range(CLIENTS)))
    finally:
        for server in replicas.servers:
            stop_server(server)

    assert [role for _, role in kills] == ["leader", "follower"]
    assert leaders[1] == 1 - leaders[0]  # the survivor took the ticks over from the killed leader
    store = PostgresStore(url)
    try:
        rounds = {r.round_id: r for r in store.list_rounds()}
        models = store.list_models()
        for round_id in range(1, ROUNDS + 1):
            round_ = rounds[round_id]
            assert round_.state == "committed", (round_id, round_.state, round_.failure_reason)
            updates = {(u.round_id, u.client_id) for u in store.list_updates(round_id)}
            mine = {a for a in acked if a[0] == round_id}
            assert mine <= updates, f"round {round_id} lost acknowledged updates"
            assert len(updates) == PER_ROUND == len(round_.selected)
            versions = [m.version for m in models if m.round_id == round_id]
            assert versions == [round_.result_version], (round_id, versions)
            assert store.get_model(versions[0]).participants == PER_ROUND  # type: ignore[union-attr]
        assert {a for a in acked if a[0] <= ROUNDS} == {
            (u.round_id, u.client_id) for r in range(1, ROUNDS + 1) for u in store.list_updates(r)
        }
        with_round = [m.round_id for m in models if m.round_id is not None]
        assert len(with_round) == len(set(with_round))  # no round committed twice
    finally:
        store.close()


def _committed_rounds(url: str) -> Callable[[], int]:
    def count() -> int:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT COUNT(*) FROM rounds WHERE state = 'committed'").fetchone()
        return int(row[0]) if row else 0

    return count


def test_the_leader_lock_passes_to_the_other_replica_when_its_connection_drops(
    postgres: PostgresCluster,
) -> None:
    url = postgres.new_database()
    first, second = PostgresLeadership(url), PostgresLeadership(url)
    try:
        assert first.refresh() is True
        assert second.refresh() is False
        assert second.held() is False
        assert first.refresh() is True  # a holder keeps it
        with psycopg.connect(url, autocommit=True) as admin:  # the holder's session dies
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks "
                "WHERE locktype = 'advisory' AND granted "
                "AND (classid::bigint << 32 | objid::bigint) = %s",
                (LEADER_LOCK_KEY,),
            )
        deadline = time.monotonic() + 10
        while not second.refresh():
            assert time.monotonic() < deadline, "the lock was not released with its session"
            time.sleep(0.05)
        assert first.refresh() is False  # it reconnects and finds the lock taken
    finally:
        first.close()
        second.close()


def test_closing_the_leadership_releases_the_lock_at_once(postgres: PostgresCluster) -> None:
    url = postgres.new_database()
    first, second = PostgresLeadership(url), PostgresLeadership(url)
    try:
        assert first.refresh() is True
        first.close()
        assert second.refresh() is True
    finally:
        first.close()
        second.close()


def test_a_starting_replica_leaves_the_shared_directorys_recent_temporary_files(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    fresh, stale = (tmp_path / "artifacts" / "tmp" / f"{n}.part" for n in ("fresh", "stale"))
    fresh.write_bytes(b"another replica is writing this")
    stale.write_bytes(b"a crashed write")
    hour_ago = time.time() - 3700
    os.utime(stale, (hour_ago, hour_ago))
    assert store.clean_temporary(older_than_s=3600) == 1
    assert fresh.exists()
    assert not stale.exists()
    assert store.clean_temporary() == 1  # alone on the directory: every leftover goes
    assert not fresh.exists()
