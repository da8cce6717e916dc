"""A real ``fedge-coordinator serve --db postgresql://...`` process on the session's
PostgreSQL server: it serves a round to devices over HTTP, the state outlives a SIGKILL,
and the admin commands' direct mode (``--db postgresql://... --artifacts DIR``) reads it."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import requests

from coordinator.cli import main
from fedge.weights import Weights
from tests.support.coordinator import (
    ADMIN_TOKEN,
    EdgeClient,
    admin_request,
    bearer,
    local_training,
    make_bundle,
    serve_command,
    start_server,
    stop_server,
    wait_for,
    write_admin_token,
)
from tests.support.postgres import PostgresCluster


def test_serve_on_postgresql_commits_a_round_that_outlives_sigkill(
    tmp_path: Path, postgres: PostgresCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres.new_database()
    make_bundle(tmp_path / "bundle")
    command = serve_command(
        tmp_path, tmp_path / "bundle", write_admin_token(tmp_path),
        "--db", url, "--clients-per-round", "2", "--min-clients", "2",
        "--deadline-seconds", "30", "--retry-after", "1",
    )  # fmt: skip
    server = start_server(command, tmp_path)
    try:
        clients = [EdgeClient(server.url, "north") for _ in range(2)]
        tasks = [wait_for(c.poll) for c in clients]
        assert {t["round_id"] for t in tasks} == {1}
        _, base = clients[0].download("v1")
        deltas = [local_training(base, seed=i).delta(base) for i in range(2)]
        for i, client in enumerate(clients):
            response = client.upload(tasks[i], deltas[i], num_examples=10 * (i + 1))
            assert response.status_code == 201, response.text
        round_ = wait_for(
            lambda: (r := admin_request(server.url, "/v1/rounds/1"))["state"] == "committed" and r,
            timeout=30,
        )
        assert round_["num_updates"] == 2
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
    finally:
        stop_server(server)
    assert not (tmp_path / "state.db").exists()  # the state went to PostgreSQL

    restarted = start_server(command, tmp_path)
    try:
        assert admin_request(restarted.url, "/v1/rounds/1")["state"] == "committed"
        assert admin_request(restarted.url, "/v1/models/v2")["participants"] == 2
        weights = requests.get(
            f"{restarted.url}/v1/models/v2/weights", headers=bearer(ADMIN_TOKEN), timeout=10
        )
        expected = Weights(
            {k: base[k] + (deltas[0][k].astype(np.float64) * 10 + deltas[1][k] * 20) / 30
             for k in base}
        )  # fmt: skip
        assert Weights.from_bytes(weights.content).allclose(expected, atol=1e-6)
    finally:
        stop_server(restarted)

    direct = ["--db", url, "--artifacts", str(tmp_path / "artifacts"), "--json"]
    assert main(["models", "list", *direct]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["version"] for m in listed] == ["v1", "v2"]


def test_an_unreachable_postgresql_database_is_one_error_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = "postgresql://fedge:hunter2@127.0.0.1:1/fedge?connect_timeout=2"
    assert main(["models", "list", "--db", db, "--artifacts", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fedge-coordinator: error: cannot use the PostgreSQL database ")
    assert len(err.strip().splitlines()) == 1
    assert "hunter2" not in err
