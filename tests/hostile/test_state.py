"""State the server finds on disk: a round a crash (or an older version) left aggregating
with numbers that cannot be committed, a --db that is not SQLite, corrupt pages, a record
that cannot be read. The server starts on any state it wrote itself; on state it cannot
read, ``fedge-coordinator serve`` exits 1 with one error line."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests

from coordinator.records import UpdateRecord
from tests.support import REPO_ROOT
from tests.support.coordinator import (
    HTTP_TIMEOUT,
    ServerProcess,
    admin_request,
    build_service,
    delta,
    production_digest,
    serve_command,
    wait_for,
    write_admin_token,
)

StartServer = Callable[..., ServerProcess]


def _aggregating_round_with_overflowing_metrics(workdir: Path) -> str:
    """State an earlier version could write: round 1 aggregating, one stored update whose
    metric times its example count overflows. The sha256 of v1's weights."""
    service = build_service(workdir, clients_per_round=2, min_clients=1)
    clients = [service.register_client(region="north") for _ in range(2)]
    round_ = service.store.get_round(1)
    assert round_ is not None
    assert round_.state == "collecting"
    body = delta(1).to_bytes()
    for i, client in enumerate(clients):
        service.store.add_update(
            UpdateRecord(
                round_id=1,
                client_id=client.client_id,
                task_id=f"r1-{client.client_id}",
                idempotency_key=f"stored-key-{i}",
                sha256=service.artifacts.put_bytes(body),
                size=len(body),
                num_examples=1_000_000,
                l2_norm=1.0,
                received_at=service.now(),
                metrics={"loss": 1e308},
            )
        )
    service.store.save_round(dataclasses.replace(round_, state="aggregating"))
    digest = service.registry.production().artifacts["weights.safetensors"]
    service.store.close()
    return digest


def test_a_round_that_cannot_commit_fails_on_start_and_the_next_opens(
    serve: StartServer, tmp_path: Path
) -> None:
    v1 = _aggregating_round_with_overflowing_metrics(tmp_path)
    server = serve("--clients-per-round", "2", "--min-clients", "1", "--retry-after", "1")
    failed = admin_request(server.url, "/v1/rounds/1")
    assert failed["state"] == "failed", failed
    assert failed["failure_reason"].startswith("aggregation failed: ")
    assert "not finite" in failed["failure_reason"]
    alerts = admin_request(server.url, "/v1/alerts?kind=round_failed")["alerts"]
    assert [a["round_id"] for a in alerts] == [1]
    assert "not finite" in alerts[0]["message"]
    assert production_digest(server.url) == v1
    assert [m["version"] for m in admin_request(server.url, "/v1/models")["models"]] == ["v1"]
    # Never wedged: the continuous engine opened round 2, which collects.
    second = wait_for(lambda: (r := admin_request(server.url, "/v1/rounds"))["rounds"][1:] and r)
    assert second["rounds"][1]["state"] == "collecting"


def _serve_once(workdir: Path, db: str) -> subprocess.CompletedProcess[str]:
    """``fedge-coordinator serve`` that must exit by itself (bounded)."""
    bundle = workdir / "bundle"
    if not (bundle / "manifest.json").exists():
        build_service(workdir / "scratch").store.close()
        bundle = workdir / "scratch" / "bundle"
    command = serve_command(workdir, bundle, write_admin_token(workdir))
    command = [a for a in command if a != "-v"]
    command[command.index("--db") + 1] = db
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "serve", "-q", *command],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fedge-coordinator: error: "), lines[0]
    assert "Traceback" not in result.stderr
    assert "cannot join thread" not in result.stderr
    return lines[0]


def test_a_file_that_is_not_sqlite_exits_1(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    db.write_bytes(b"these are not the pages you are looking for\n" * 200)
    result = _serve_once(tmp_path, str(db))
    assert result.returncode == 1, result.stderr
    line = _one_error_line(result)
    assert str(db) in line
    assert "cannot read the state database" in line
    assert db.read_bytes().startswith(b"these are not")  # left as it was


def test_a_directory_as_db_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    result = _serve_once(tmp_path, str(tmp_path / "dir.db"))
    assert result.returncode == 2, result.stderr
    assert "is a directory" in _one_error_line(result)


def _corrupt_middle_page(db: Path) -> None:
    data = bytearray(db.read_bytes())
    pages = len(data) // 4096
    assert pages > 10, "a database of a few pages cannot have a middle one"
    middle = pages // 2
    data[middle * 4096 : (middle + 1) * 4096] = np.random.default_rng(7).bytes(4096)
    db.write_bytes(bytes(data))


def test_random_bytes_in_a_middle_page_exit_1_at_start(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=500, min_clients=1)
    for _ in range(300):
        service.register_client(region="north")
    service.store.close()
    _corrupt_middle_page(tmp_path / "state.db")
    result = _serve_once(tmp_path, str(tmp_path / "state.db"))
    assert result.returncode == 1, result.stderr
    assert "is corrupt" in _one_error_line(result)


def test_a_record_that_cannot_be_read_exits_1_with_its_error(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=5, min_clients=1)
    service.register_client(region="north")  # the continuous engine opens round 1
    service.store.close()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert conn.execute("UPDATE rounds SET doc = '{' WHERE round_id = 1").rowcount == 1
    conn.close()
    result = _serve_once(tmp_path, str(tmp_path / "state.db"))
    assert result.returncode == 1, result.stderr
    _one_error_line(result)


def test_the_server_restarts_on_its_own_state(serve: StartServer) -> None:
    """The state a server wrote (clients, a collecting round) serves again after a stop."""
    flags = ("--clients-per-round", "5", "--min-clients", "1", "--retry-after", "1")
    first = serve(*flags)
    requests.post(f"{first.url}/v1/clients", json={}, timeout=HTTP_TIMEOUT)
    assert admin_request(first.url, "/v1/rounds/1")["state"] == "open"
    first.coordinator.stop()
    again = serve(*flags)
    assert admin_request(again.url, "/v1/rounds/1")["state"] == "open"
    assert len(admin_request(again.url, "/v1/clients")["clients"]) == 1
