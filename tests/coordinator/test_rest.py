"""The REST adapter through Flask's test client: auth, polling, downloads, errors, logs."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from coordinator.auth import RedactingFilter, hash_token, redact
from coordinator.rest import ApiConfig, create_app
from coordinator.service import CoordinatorService
from fedge.bundle import BundleManifest
from fedge.messages import StatsReport
from fedge.weights import Weights
from tests.support.coordinator import (
    ADMIN_TOKEN,
    bearer,
    build_service,
    delta,
    training_stats,
    upload_headers,
)

ENROLL = "enroll-" + "x" * 24


@pytest.fixture
def app_service(tmp_path: Path) -> tuple[FlaskClient, CoordinatorService]:
    service = build_service(tmp_path, clients_per_round=2, min_clients=2, retry_after_seconds=3)
    app = create_app(service, ApiConfig(admin_token_hash=hash_token(ADMIN_TOKEN)))
    return app.test_client(), service


def _register(http: FlaskClient, region: str = "north") -> str:
    response = http.post("/v1/clients", json={"region": region})
    assert response.status_code == 201
    token: str = response.get_json()["token"]
    return token


def test_registration_returns_a_token_stored_only_hashed(
    app_service: tuple[FlaskClient, CoordinatorService],
) -> None:
    http, service = app_service
    response = http.post("/v1/clients", json={"region": "north", "metadata": {"os": "linux"}})
    document = response.get_json()
    assert response.status_code == 201
    assert document["token"].startswith("fedge_")
    stored = service.store.get_client(document["client_id"])
    assert stored is not None
    assert stored.token_hash == hashlib.sha256(document["token"].encode()).hexdigest()
    listing = http.get("/v1/clients", headers=bearer(ADMIN_TOKEN)).get_json()
    assert document["token"] not in str(listing)
    assert "token_hash" not in str(listing)


def test_poll_gets_204_with_retry_after_then_a_task(
    app_service: tuple[FlaskClient, CoordinatorService],
) -> None:
    http, _ = app_service
    first = _register(http)
    waiting = http.get("/v1/tasks/next", headers=bearer(first))
    assert waiting.status_code == 204
    assert waiting.headers["Retry-After"] == "3"
    _register(http)
    task = http.get("/v1/tasks/next", headers=bearer(first)).get_json()
    assert (task["type"], task["kind"], task["round_id"]) == ("task", "train", 1)
    assert task["config"]["batch_size"] == 8


def test_downloads_carry_sha256_etags_and_honour_if_none_match(
    app_service: tuple[FlaskClient, CoordinatorService],
) -> None:
    http, _ = app_service
    token = _register(http)
    manifest_response = http.get("/v1/models/current/manifest", headers=bearer(token))
    manifest = BundleManifest.from_json(manifest_response.data)
    assert manifest.model_version == "v1"
    weights = http.get("/v1/models/v1/weights", headers=bearer(token))
    digest = hashlib.sha256(weights.data).hexdigest()
    assert weights.headers["ETag"] == f'"{digest}"'
    assert digest == manifest.files["weights.safetensors"].sha256
    assert Weights.from_bytes(weights.data).names == manifest.head
    for name, entry in manifest.files.items():
        body = http.get(f"/v1/models/v1/files/{name}", headers=bearer(token)).data
        assert hashlib.sha256(body).hexdigest() == entry.sha256
    cached = http.get(
        "/v1/models/v1/weights", headers={**bearer(token), "If-None-Match": f'"{digest}"'}
    )
    assert cached.status_code == 304


@pytest.mark.parametrize(
    ("method", "path", "token", "status", "code"),
    [
        ("get", "/v1/models", None, 401, "missing_token"),
        ("get", "/v1/models", "client", 403, "admin_required"),
        ("get", "/v1/models", "nonsense-token", 401, "invalid_token"),
        ("post", "/v1/models/rollback", "client", 403, "admin_required"),
        ("get", "/v1/tasks/next", "admin", 403, "client_token_required"),
        ("get", "/v1/tasks/next", None, 401, "missing_token"),
        ("get", "/v1/models/current/weights", None, 401, "missing_token"),
        ("get", "/v1/alerts", "client", 403, "admin_required"),
    ],
)
def test_auth_matrix(
    app_service: tuple[FlaskClient, CoordinatorService],
    method: str,
    path: str,
    token: str | None,
    status: int,
    code: str,
) -> None:
    http, _ = app_service
    tokens = {"client": _register(http), "admin": ADMIN_TOKEN}
    headers = bearer(tokens.get(token, token)) if token else {}
    response = getattr(http, method)(path, headers=headers)
    assert response.status_code == status
    assert response.get_json()["error"] == code


def test_admin_endpoints_are_disabled_without_an_admin_token(tmp_path: Path) -> None:
    service = build_service(tmp_path)
    http = create_app(service, ApiConfig()).test_client()
    response = http.get("/v1/models", headers=bearer("whatever-token-value"))
    assert response.status_code == 403
    assert response.get_json()["error"] == "admin_disabled"


def test_enrollment_token_gates_registration_when_configured(tmp_path: Path) -> None:
    service = build_service(tmp_path)
    config = ApiConfig(enrollment_token_hash=hash_token(ENROLL))
    http = create_app(service, config).test_client()
    assert http.post("/v1/clients", json={}).status_code == 401
    assert http.post("/v1/clients", json={}, headers=bearer("wrong-" * 4)).status_code == 401
    assert http.post("/v1/clients", json={}, headers=bearer(ENROLL)).status_code == 201


def test_unknown_route_and_method_are_json_errors(
    app_service: tuple[FlaskClient, CoordinatorService],
) -> None:
    http, _ = app_service
    missing = http.get("/v1/nothing")
    assert (missing.status_code, missing.get_json()["error"]) == (404, "not_found")
    wrong = http.delete("/v1/models")
    assert (wrong.status_code, wrong.get_json()["error"]) == (405, "method_not_allowed")
    assert "GET" in wrong.headers["Allow"]
    options = http.options("/v1/clients")  # no automatic OPTIONS: nothing undocumented answers
    assert options.status_code == 405
    assert set(options.headers["Allow"].split(", ")) == {"GET", "HEAD", "POST"}


def test_admin_can_open_rounds_and_create_tasks(tmp_path: Path) -> None:
    service = build_service(tmp_path, continuous=False, clients_per_round=1, min_clients=1)
    http = create_app(service, ApiConfig(admin_token_hash=hash_token(ADMIN_TOKEN))).test_client()
    token = _register(http)
    opened = http.post("/v1/rounds", json={"epochs": 3}, headers=bearer(ADMIN_TOKEN))
    assert opened.status_code == 201
    assert opened.get_json()["config"]["epochs"] == 3
    created = http.post("/v1/tasks", json={"kind": "stats"}, headers=bearer(ADMIN_TOKEN))
    assert created.status_code == 201
    kinds = {t["kind"] for t in created.get_json()["tasks"]}
    assert kinds == {"stats"}
    listed = http.get("/v1/rounds", headers=bearer(ADMIN_TOKEN)).get_json()["rounds"]
    assert [r["state"] for r in listed] == ["collecting"]
    task = http.get("/v1/tasks/next", headers=bearer(token)).get_json()
    assert task["kind"] == "train"


def test_upload_through_rest_is_accepted_then_acknowledged_again(
    app_service: tuple[FlaskClient, CoordinatorService],
) -> None:
    http, service = app_service
    token, _ = _register(http), _register(http)
    task = http.get("/v1/tasks/next", headers=bearer(token)).get_json()
    body = delta(3).to_bytes()
    headers = upload_headers(token, task["task_id"], key="upload-key-1")
    headers["X-Fedge-Delta-Sha256"] = hashlib.sha256(body).hexdigest()
    first = http.post("/v1/rounds/1/updates", data=body, headers=headers)
    assert first.status_code == 201, first.get_json()
    assert first.get_json()["sha256"] == headers["X-Fedge-Delta-Sha256"]
    again = http.post("/v1/rounds/1/updates", data=body, headers=headers)
    assert again.status_code == 200
    assert again.get_json()["duplicate"] is True
    assert len(service.round_updates(1)) == 1


def test_redaction_masks_bearer_tokens_and_fedge_tokens() -> None:
    token = "fedge_" + "A1b2" * 10
    assert token not in redact(f"Authorization: Bearer {token}")
    assert "s3cret-admin-value" not in redact("authorization=Bearer s3cret-admin-value")
    assert token not in redact(f"saw {token} in a body")
    assert redact("GET /v1/models -> 200") == "GET /v1/models -> 200"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token=%s", (token,), None)
    assert RedactingFilter().filter(record)
    assert token not in record.getMessage()


def test_drifted_stats_over_rest_show_up_in_alerts(
    app_service: tuple[FlaskClient, CoordinatorService],
) -> None:
    http, service = app_service
    token = _register(http)
    client = service.authenticate(token)
    (task,) = service.create_tasks("stats", client_ids=[client.client_id])
    report = StatsReport(task.task_id, training_stats(4, fare_mean=30.0)).to_dict()
    posted = http.post("/v1/stats", json=report, headers=bearer(token))
    assert posted.status_code == 201, posted.get_json()
    assert posted.get_json()["kind"] == "stats"
    alerts = http.get("/v1/alerts?kind=data_drift", headers=bearer(ADMIN_TOKEN)).get_json()
    assert [a["kind"] for a in alerts["alerts"]] == ["data_drift"]
    assert "fare" in alerts["alerts"][0]["details"]["columns"]
    bad_query = http.get("/v1/alerts?since=soon", headers=bearer(ADMIN_TOKEN))
    assert (bad_query.status_code, bad_query.get_json()["error"]) == (400, "invalid_query")
