"""Against the real server process: kill -9 mid-round and restart (crash test), and
promote/rollback as an operator would, with the HTTP API and the CLI."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

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
    running_server,
    serve_command,
    start_server,
    stop_server,
    upload_headers,
    wait_for,
    write_admin_token,
)

TIMEOUT = 10


def _committed(url: str, round_id: int) -> dict[str, Any] | None:
    round_ = admin_request(url, f"/v1/rounds/{round_id}")
    return round_ if round_["state"] in ("committed", "failed") else None


def test_acknowledged_updates_survive_sigkill(tmp_path: Path) -> None:
    make_bundle(tmp_path / "bundle")
    command = serve_command(
        tmp_path, tmp_path / "bundle", write_admin_token(tmp_path),
        "--clients-per-round", "3", "--min-clients", "2", "--deadline-seconds", "8",
        "--retry-after", "1",
    )  # fmt: skip
    server = start_server(command, tmp_path)
    try:
        clients = [EdgeClient(server.url, "north") for _ in range(3)]
        tasks = [wait_for(c.poll) for c in clients]
        _, base = clients[0].download("v1")
        acknowledged = []
        for i in range(2):
            delta = local_training(base, seed=i).delta(base)
            response = clients[i].upload(tasks[i], delta, num_examples=10 * (i + 1))
            assert response.status_code == 201, response.text
            acknowledged.append((clients[i].client_id, delta, 10 * (i + 1)))
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        assert server.process.returncode == -signal.SIGKILL
    finally:
        stop_server(server)

    restarted = start_server(command, tmp_path)
    try:
        assert admin_request(restarted.url, "/v1/rounds/1")["num_updates"] == 2
        round_ = wait_for(lambda: _committed(restarted.url, 1), timeout=30)
        assert round_["state"] == "committed", round_
        assert sorted(u["client_id"] for u in round_["updates"]) == sorted(
            c for c, _, _ in acknowledged
        )
        model = admin_request(restarted.url, "/v1/models/v2")
        assert model["participants"] == 2
        new = Weights.from_bytes(
            requests.get(
                f"{restarted.url}/v1/models/v2/weights", headers=bearer(ADMIN_TOKEN), timeout=10
            ).content
        )
        expected = Weights(
            {k: base[k] + sum(d[k].astype(np.float64) * n for _, d, n in acknowledged) / 30
             for k in base}
        )  # fmt: skip
        assert new.allclose(expected, atol=1e-6)
        clients[2].url = restarted.url  # port 0: the restarted server has a new port
        late = clients[2].upload(tasks[2], local_training(base, 9).delta(base), 5)
        assert late.status_code == 409
        assert late.json()["error"] == "round_closed"
    finally:
        stop_server(restarted)


def _current(url: str, token: str) -> tuple[str, str]:
    """The version and weights sha256 a client is served as "current"."""
    manifest = requests.get(f"{url}/v1/models/current/manifest", headers=bearer(token), timeout=10)
    weights = requests.get(f"{url}/v1/models/current/weights", headers=bearer(token), timeout=10)
    return manifest.json()["model_version"], weights.headers["ETag"].strip('"')


def test_promote_then_rollback_serves_v1_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_bundle(tmp_path / "bundle")
    token_file = write_admin_token(tmp_path)
    command = serve_command(
        tmp_path, tmp_path / "bundle", token_file, "--on-demand", "--no-auto-promote",
        "--clients-per-round", "2", "--min-clients", "2", "--retry-after", "1",
    )  # fmt: skip
    with running_server(command, tmp_path) as server:
        assert admin_request(server.url, "/v1/rounds", "POST")["round_id"] == 1
        clients = [EdgeClient(server.url, "north") for _ in range(2)]
        v1 = _current(server.url, clients[0].token)
        for i, client in enumerate(clients):
            task = wait_for(client.poll)
            _, base = client.download(task["model_version"])
            assert client.upload(task, local_training(base, i).delta(base), 10).status_code == 201
        wait_for(lambda: _committed(server.url, 1))
        assert admin_request(server.url, "/v1/models/v2")["stage"] == "candidate"
        assert _current(server.url, clients[0].token) == v1

        cli = ["--coordinator", server.url, "--admin-token-file", str(token_file), "--json"]
        assert main(["models", "promote", "v2", *cli]) == 0
        assert json.loads(capsys.readouterr().out)["stage"] == "production"
        v2 = _current(server.url, clients[0].token)
        assert v2[0] == "v2"
        assert v2[1] != v1[1]

        assert main(["models", "rollback", *cli]) == 0
        assert json.loads(capsys.readouterr().out)["version"] == "v1"
        assert _current(server.url, clients[1].token) == v1
        assert admin_request(server.url, "/v1/rounds", "POST")["base_version"] == "v1"
        task = wait_for(clients[0].poll)
        assert (task["round_id"], task["model_version"]) == (2, "v1")

        v2_events = [
            (e["kind"], e["previous"]) for e in admin_request(server.url, "/v1/models/v2")["events"]
        ]
        v1_events = [
            (e["kind"], e["previous"]) for e in admin_request(server.url, "/v1/models/v1")["events"]
        ]
        assert ("promoted", "v1") in v2_events
        assert ("rolled_back", "v2") in v1_events
        assert admin_request(server.url, "/v1/models/v2")["stage"] == "archived"

        assert main(["models", "list", *cli]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [(m["version"], m["stage"]) for m in listed] == [
            ("v1", "production"),
            ("v2", "archived"),
        ]
        response = requests.post(
            f"{server.url}/v1/rounds/2/updates",
            data=b"x",
            headers=upload_headers(clients[0].token, task["task_id"], key="k" * 10),
            timeout=TIMEOUT,
        )
        assert response.status_code == 400  # still served by the same healthy process
