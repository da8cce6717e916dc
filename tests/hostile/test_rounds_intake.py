"""Hostile numbers and rounds against the real server: every number a client or an operator
sends is bounded before it is stored, a round that cannot finish ends with a reason, an
operator can cancel a round and revoke a client, and the global model never changes on a
refusal."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from coordinator.cli import main
from tests.support.coordinator import (
    HTTP_TIMEOUT,
    EdgeClient,
    ServerProcess,
    admin_call,
    delta,
    production_digest,
    upload_headers,
    wait_for,
)

StartServer = Callable[..., ServerProcess]
ON_DEMAND = ("--on-demand", "--retry-after", "1")


def _round(url: str, round_id: int) -> dict[str, Any]:
    response = admin_call(url, "GET", f"/v1/rounds/{round_id}")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def _still_answers(url: str) -> None:
    assert requests.get(f"{url}/healthz", timeout=HTTP_TIMEOUT).status_code == 200
    assert admin_call(url, "GET", "/v1/rounds").status_code == 200


def _upload(
    client: EdgeClient, task: dict[str, Any], *, num_examples: int, metrics: str, key: str
) -> requests.Response:
    return client.session.post(
        f"{client.url}/v1/rounds/{task['round_id']}/updates",
        data=delta(3).to_bytes(),
        headers=upload_headers(
            client.token, task["task_id"], num_examples=num_examples, key=key, metrics=metrics
        ),
        timeout=HTTP_TIMEOUT,
    )


def test_overflowing_metrics_are_refused_and_the_round_commits(serve: StartServer) -> None:
    server = serve("--clients-per-round", "2", "--min-clients", "2", "--retry-after", "1")
    clients = [EdgeClient(server.url, "north") for _ in range(2)]
    tasks = [wait_for(c.poll) for c in clients]
    before = production_digest(server.url)

    hostile = _upload(
        clients[0], tasks[0], num_examples=1_000_000, metrics='{"loss": 1e308}', key="hostile-01"
    )
    assert hostile.status_code == 422, hostile.text
    assert hostile.json()["error"] == "invalid_metrics"
    assert "1e+09" in hostile.json()["detail"]
    accuracy = _upload(
        clients[0], tasks[0], num_examples=10, metrics='{"accuracy": 7.5}', key="hostile-02"
    )
    assert accuracy.status_code == 422, accuracy.text
    assert "[0, 1]" in accuracy.json()["detail"]
    assert production_digest(server.url) == before
    assert _round(server.url, 1)["state"] == "collecting"

    # The largest numbers the bounds allow aggregate to a finite result and commit.
    for i, (client, task) in enumerate(zip(clients, tasks, strict=True)):
        ok = _upload(
            client, task, num_examples=1_000_000, metrics='{"loss": 1e9}', key=f"ok-{i:06d}"
        )
        assert ok.status_code == 201, ok.text
    committed = wait_for(lambda: (r := _round(server.url, 1))["state"] != "collecting" and r)
    assert committed["state"] == "committed", committed
    assert production_digest(server.url) != before
    _still_answers(server.url)


def test_an_unbounded_example_count_is_refused(serve: StartServer) -> None:
    server = serve("--clients-per-round", "1", "--min-clients", "1", "--retry-after", "1")
    client = EdgeClient(server.url, "north")
    task = wait_for(client.poll)
    before = production_digest(server.url)
    response = _upload(
        client, task, num_examples=10**30, metrics='{"loss": 0.5}', key="too-many-01"
    )
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"] in ("invalid_num_examples", "invalid_header")
    assert production_digest(server.url) == before
    assert _round(server.url, 1)["num_updates"] == 0
    _still_answers(server.url)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("deadline_seconds", 1e308),
        ("clients_per_round", 1_000_000),
        ("min_available_clients", 10**9),
        ("epochs", 10**6),
        ("batch_size", 10**7),
        ("learning_rate", 1e6),
        ("norm_bound", 1e308),
        ("max_examples", 10**12),
    ],
)
def test_round_settings_above_their_bounds_are_refused(
    serve: StartServer, setting: str, value: float
) -> None:
    server = serve(*ON_DEMAND)
    before = production_digest(server.url)
    response = admin_call(server.url, "POST", "/v1/rounds", json={setting: value})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_config"
    assert setting in response.json()["detail"]
    assert "<=" in response.json()["detail"]
    listing = admin_call(server.url, "GET", "/v1/rounds")
    assert listing.status_code == 200
    assert listing.json()["rounds"] == []
    assert production_digest(server.url) == before


def test_option_values_above_their_bound_are_refused(serve: StartServer) -> None:
    server = serve(*ON_DEMAND)
    body = {"aggregator": "fedadam", "aggregator_options": {"lr": 1e300}}
    response = admin_call(server.url, "POST", "/v1/rounds", json=body)
    assert response.status_code == 400, response.text
    assert "aggregator_options" in response.json()["detail"]
    assert admin_call(server.url, "GET", "/v1/rounds").json()["rounds"] == []


def test_a_round_id_beyond_64_bits_is_404(serve: StartServer) -> None:
    server = serve(*ON_DEMAND)
    for method, path in (
        ("GET", "/v1/rounds/99999999999999999999999"),
        ("POST", "/v1/rounds/99999999999999999999999/cancel"),
    ):
        response = admin_call(server.url, method, path)
        assert response.status_code == 404, response.text
        assert response.json() == {
            "error": "round_not_found",
            "detail": "no round 99999999999999999999999",
        }
    client = EdgeClient(server.url, "north")
    upload = client.session.post(
        f"{server.url}/v1/rounds/99999999999999999999999/updates",
        data=delta(1).to_bytes(),
        headers=upload_headers(client.token, "r1-x", key="huge-round-1"),
        timeout=HTTP_TIMEOUT,
    )
    assert upload.status_code == 404, upload.text
    assert upload.json()["error"] == "round_not_found"
    _still_answers(server.url)


def _deep(levels: int) -> str:
    return '{"loss": ' + "[" * levels + "]" * levels + "}"


@pytest.mark.parametrize(("levels", "phrase"), [(50_000, "byte limit"), (100, "deeper")])
def test_deep_json_in_the_metrics_header_is_400(
    serve: StartServer, levels: int, phrase: str
) -> None:
    server = serve("--clients-per-round", "1", "--min-clients", "1", "--retry-after", "1")
    client = EdgeClient(server.url, "north")
    task = wait_for(client.poll)
    before = production_digest(server.url)
    response = _upload(client, task, num_examples=10, metrics=_deep(levels), key="deep-json-1")
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_header"
    assert phrase in response.json()["detail"]
    assert production_digest(server.url) == before
    _still_answers(server.url)


def _safetensors(header: str) -> bytes:
    raw = header.encode()
    return len(raw).to_bytes(8, "little") + raw


@pytest.mark.parametrize("where", ["header", "metadata"])
def test_deep_json_in_a_safetensors_upload_is_400(serve: StartServer, where: str) -> None:
    server = serve("--clients-per-round", "1", "--min-clients", "1", "--retry-after", "1")
    client = EdgeClient(server.url, "north")
    task = wait_for(client.poll)
    before = production_digest(server.url)
    deep = "[" * 50_000 + "]" * 50_000
    if where == "header":
        body = _safetensors('{"x": ' + deep + "}")
    else:
        body = _safetensors(json.dumps({"__metadata__": {"fedge": deep}}))
    response = client.session.post(
        f"{server.url}/v1/rounds/{task['round_id']}/updates",
        data=body,
        headers=upload_headers(client.token, task["task_id"], key=f"deep-{where}"),
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "malformed_weights"
    assert "nested deeper than" in response.json()["detail"]
    assert production_digest(server.url) == before
    _still_answers(server.url)


def test_a_round_without_enough_clients_fails_at_its_deadline(serve: StartServer) -> None:
    server = serve(*ON_DEMAND)
    EdgeClient(server.url, "north")
    before = production_digest(server.url)
    opened = admin_call(
        server.url, "POST", "/v1/rounds", json={"clients_per_round": 5, "deadline_seconds": 1.5}
    )
    assert opened.status_code == 201, opened.text
    assert opened.json()["state"] == "open"
    assert opened.json()["deadline"] is not None
    failed = wait_for(lambda: (r := _round(server.url, 1))["state"] != "open" and r)
    assert failed["state"] == "failed", failed
    assert failed["failure_reason"] == "too few clients: 1 available, 5 needed"
    alerts = admin_call(server.url, "GET", "/v1/alerts", params={"kind": "round_failed"}).json()
    assert len(alerts["alerts"]) == 1
    again = admin_call(
        server.url, "POST", "/v1/rounds", json={"clients_per_round": 1, "min_clients": 1}
    )
    assert again.status_code == 201, again.text
    assert production_digest(server.url) == before


def test_an_operator_cancels_a_round_that_would_wait(
    serve: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(*ON_DEMAND)
    before = production_digest(server.url)
    opened = admin_call(server.url, "POST", "/v1/rounds", json={"clients_per_round": 100_000})
    assert opened.status_code == 201, opened.text
    blocked = admin_call(server.url, "POST", "/v1/rounds", json={})
    assert blocked.status_code == 409
    assert blocked.json()["error"] == "round_active"

    code = main([
        "rounds", "cancel", "1", "--coordinator", server.url,
        "--admin-token-file", str(tmp_path / "admin-token"), "--json",
    ])  # fmt: skip
    assert code == 0
    cancelled = json.loads(capsys.readouterr().out)
    assert cancelled["state"] == "failed"
    assert cancelled["failure_reason"] == "cancelled by an operator"

    again = admin_call(server.url, "POST", "/v1/rounds/1/cancel")
    assert again.status_code == 409, again.text
    assert again.json()["error"] == "round_closed"
    assert "already failed" in again.json()["detail"]
    assert admin_call(server.url, "POST", "/v1/rounds/7/cancel").status_code == 404
    assert admin_call(server.url, "POST", "/v1/rounds", json={}).status_code == 201
    assert production_digest(server.url) == before


def test_a_revoked_client_is_locked_out_and_never_selected(
    serve: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(*ON_DEMAND)
    alice, bob = EdgeClient(server.url, "north"), EdgeClient(server.url, "south")
    opened = admin_call(
        server.url,
        "POST",
        "/v1/rounds",
        json={"clients_per_round": 2, "min_clients": 1, "deadline_seconds": 600},
    )
    assert opened.status_code == 201, opened.text
    alice_task, bob_task = wait_for(alice.poll), wait_for(bob.poll)

    code = main([
        "clients", "revoke", alice.client_id, "--coordinator", server.url,
        "--admin-token-file", str(tmp_path / "admin-token"), "--json",
    ])  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["revoked_at"] is not None

    for response in (
        alice.session.get(f"{server.url}/v1/tasks/next", timeout=HTTP_TIMEOUT),
        _upload(alice, alice_task, num_examples=10, metrics='{"loss": 0.5}', key="revoked-1"),
    ):
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "client_revoked"
    # Alice's task expired: Bob's update is the last one the round waits for.
    ok = _upload(bob, bob_task, num_examples=10, metrics='{"loss": 0.5}', key="bob-update-1")
    assert ok.status_code == 201, ok.text
    committed = wait_for(lambda: (r := _round(server.url, 1))["state"] != "collecting" and r)
    assert committed["state"] == "committed", committed

    for round_id in (2, 3, 4):
        opened = admin_call(
            server.url, "POST", "/v1/rounds", json={"clients_per_round": 1, "min_clients": 1}
        )
        assert opened.status_code == 201, opened.text
        assert opened.json()["selected"] == [bob.client_id]
        assert admin_call(server.url, "POST", f"/v1/rounds/{round_id}/cancel").status_code == 200
    listed = admin_call(server.url, "GET", "/v1/clients").json()["clients"]
    assert {c["client_id"]: c["revoked_at"] is not None for c in listed} == {
        alice.client_id: True,
        bob.client_id: False,
    }
