"""Loopback integration: the real server (waitress, real port, subprocess) drives a full
round with three HTTP clients, and its log never shows a token."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import requests

from fedge.bundle import BundleManifest
from fedge.weights import Weights
from tests.coordinator_fixtures import (
    ADMIN_TOKEN,
    bearer,
    make_bundle,
    running_server,
    serve_command,
    upload_headers,
    wait_for,
    write_admin_token,
)

TIMEOUT = 10


class EdgeClient:
    """What a device does over HTTP: register, poll, download and verify, upload."""

    def __init__(self, url: str, region: str) -> None:
        self.url = url
        self.session = requests.Session()
        response = self.session.post(f"{url}/v1/clients", json={"region": region}, timeout=TIMEOUT)
        assert response.status_code == 201, response.text
        self.client_id: str = response.json()["client_id"]
        self.token: str = response.json()["token"]
        self.session.headers.update(bearer(self.token))

    def poll(self) -> dict[str, Any] | None:
        response = self.session.get(f"{self.url}/v1/tasks/next", timeout=TIMEOUT)
        if response.status_code == 204:
            assert int(response.headers["Retry-After"]) >= 1
            return None
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        return task

    def download(self, version: str) -> tuple[BundleManifest, Weights]:
        response = self.session.get(f"{self.url}/v1/models/{version}/manifest", timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        manifest = BundleManifest.from_json(response.content)
        for name, entry in manifest.files.items():
            body = self.session.get(f"{self.url}/v1/models/{version}/files/{name}", timeout=TIMEOUT)
            digest = hashlib.sha256(body.content).hexdigest()
            assert digest == entry.sha256 == body.headers["ETag"].strip('"')
            assert len(body.content) == entry.size
        weights = self.session.get(f"{self.url}/v1/models/{version}/weights", timeout=TIMEOUT)
        return manifest, Weights.from_bytes(weights.content)

    def upload(self, task: dict[str, Any], delta: Weights, num_examples: int) -> requests.Response:
        headers = upload_headers(
            self.token, task["task_id"], num_examples=num_examples, key=str(uuid.uuid4())
        )
        return self.session.post(
            f"{self.url}/v1/rounds/{task['round_id']}/updates",
            data=delta.to_bytes(),
            headers=headers,
            timeout=TIMEOUT,
        )


def _admin(url: str, path: str, method: str = "GET") -> dict[str, Any]:
    response = requests.request(method, url + path, headers=bearer(ADMIN_TOKEN), timeout=TIMEOUT)
    assert response.ok, response.text
    document: dict[str, Any] = response.json()
    return document


def _local_training(weights: Weights, seed: int) -> Weights:
    """Stand-in for on-device training: a small deterministic step away from the weights."""
    rng = np.random.default_rng(seed)
    return Weights({n: a + rng.normal(0, 0.01, a.shape) for n, a in weights.items()})


def test_full_round_with_three_http_clients(tmp_path: Path) -> None:
    make_bundle(tmp_path / "bundle")
    command = serve_command(
        tmp_path, tmp_path / "bundle", write_admin_token(tmp_path),
        "--clients-per-round", "3", "--min-clients", "3", "--deadline-seconds", "60",
        "--retry-after", "1",
    )  # fmt: skip
    with running_server(command, tmp_path) as server:
        clients = [EdgeClient(server.url, region) for region in ("north", "south", "north")]
        tasks = [wait_for(client.poll) for client in clients]
        assert {t["round_id"] for t in tasks} == {1}
        assert {t["model_version"] for t in tasks} == {"v1"}
        sent = []
        for i, (client, task) in enumerate(zip(clients, tasks, strict=True)):
            manifest, weights = client.download(task["model_version"])
            assert manifest.model_version == "v1"
            assert manifest.train_batch_size == task["config"]["batch_size"]
            delta = _local_training(weights, seed=i).delta(weights)
            response = client.upload(task, delta, num_examples=20 + 10 * i)
            assert response.status_code == 201, response.text
            assert response.json()["duplicate"] is False
            sent.append((delta, 20 + 10 * i))
        round_ = wait_for(
            lambda: (r := _admin(server.url, "/v1/rounds/1"))["state"] == "committed" and r
        )
        assert round_["result_version"] == "v2"
        assert round_["num_updates"] == 3
        model = _admin(server.url, "/v1/models/v2")
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
        metrics = requests.get(f"{server.url}/metrics", timeout=TIMEOUT).text
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
