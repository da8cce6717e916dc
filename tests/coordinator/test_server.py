"""Loopback integration: the real server (waitress, real port, subprocess) drives a full
round with three HTTP clients, and its log never shows a token."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import requests

from fedge.weights import Weights
from tests.support.coordinator import (
    ADMIN_TOKEN,
    HTTP_TIMEOUT,
    EdgeClient,
    admin_client,
    bearer,
    local_training,
    make_bundle,
    running_server,
    serve_command,
    wait_for,
    write_admin_token,
)


def test_full_round_with_three_http_clients(tmp_path: Path) -> None:
    make_bundle(tmp_path / "bundle")
    command = serve_command(
        tmp_path, tmp_path / "bundle", write_admin_token(tmp_path),
        "--clients-per-round", "3", "--min-clients", "3", "--deadline-seconds", "60",
        "--retry-after", "1",
    )  # fmt: skip
    with running_server(command, tmp_path) as server, admin_client(server.url) as admin:
        clients = [EdgeClient(server.url, region) for region in ("north", "south", "north")]
        tasks = [wait_for(client.poll) for client in clients]
        assert {t["round_id"] for t in tasks} == {1}
        assert {t["model_version"] for t in tasks} == {"v1"}
        sent = []
        for i, (client, task) in enumerate(zip(clients, tasks, strict=True)):
            manifest, weights = client.download(task["model_version"])
            assert manifest.model_version == "v1"
            assert manifest.train_batch_size == task["config"]["batch_size"]
            delta = local_training(weights, seed=i).delta(weights)
            response = client.upload(task, delta, num_examples=20 + 10 * i)
            assert response.status_code == 201, response.text
            assert response.json()["duplicate"] is False
            sent.append((delta, 20 + 10 * i))
        round_ = wait_for(lambda: (r := admin.show_round(1))["state"] == "committed" and r)
        assert round_["result_version"] == "v2"
        assert round_["num_updates"] == 3
        model = admin.show_model("v2")
        assert model["parent"] == "v1"
        assert model["round_id"] == 1
        assert model["participants"] == 3
        assert model["stage"] == "production"
        for field in ("data_fingerprint", "trainer_host", "trainer_user", "created_at",
                      "promoted_at"):  # fmt: skip
            assert model[field], field
        assert set(model["slice_metrics"]) == {"north", "south"}
        assert model["metrics"]["accuracy"] == 0.75
        assert {"weights.safetensors", "manifest.json", "server_state"} <= set(model["artifacts"])
        assert [e["kind"] for e in model["events"]] == ["registered", "promoted"]
        _, base = clients[0].download("v1")
        _, new = clients[0].download("current")
        total = sum(n for _, n in sent)
        expected = Weights(
            {k: base[k] + sum(d[k].astype(np.float64) * n for d, n in sent) / total for k in base}
        )
        assert new.allclose(expected, atol=1e-6)
        metrics = requests.get(
            f"{server.url}/metrics", headers=bearer(ADMIN_TOKEN), timeout=HTTP_TIMEOUT
        ).text
        assert 'fedge_rounds{state="committed"} 1' in metrics
        assert "fedge_updates_accepted_total 3" in metrics
        assert 'fedge_current_model_info{version="v2"} 1' in metrics
        # A client that pastes its token into a URL must not get it into the log.
        clients[0].session.get(f"{server.url}/v1/models/{clients[0].token}/manifest")
    log = server.log()
    assert "POST /v1/rounds/1/updates -> 201" in log
    assert "round 1 committed v2 from 3 updates" in log
    assert "[REDACTED]" in log
    for secret in [ADMIN_TOKEN] + [c.token for c in clients]:
        assert secret not in log
    assert server.process.returncode == 0  # clean shutdown on SIGTERM
    assert "fedge coordinator stopped" in log
