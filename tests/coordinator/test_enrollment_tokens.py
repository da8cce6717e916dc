"""Managed enrollment tokens and client token rotation: the service and the REST routes
through Flask's test client, on SQLite with a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient

from coordinator.auth import hash_token
from coordinator.errors import AuthenticationError
from coordinator.rest import ApiConfig, create_app
from coordinator.service import CoordinatorService
from tests.support.coordinator import ADMIN_TOKEN, FakeClock, bearer, build_service

STATIC = "enroll-" + "s" * 24
KEY = "k" * 43


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def service(tmp_path: Path, clock: FakeClock) -> CoordinatorService:
    return build_service(tmp_path, clock=clock)


@pytest.fixture
def http(service: CoordinatorService) -> FlaskClient:
    config = ApiConfig(
        admin_token_hash=hash_token(ADMIN_TOKEN), enrollment_token_hash=hash_token(STATIC)
    )
    return create_app(service, config).test_client()


def _create(http: FlaskClient, **body: object) -> dict[str, object]:
    response = http.post("/v1/enrollment-tokens", json=body, headers=bearer(ADMIN_TOKEN))
    assert response.status_code == 201, response.get_json()
    document: dict[str, object] = response.get_json()
    return document


def _register(http: FlaskClient, token: str, key: str | None = None) -> tuple[int, dict[str, str]]:
    headers = bearer(token)
    if key is not None:
        headers["Idempotency-Key"] = key
    response = http.post("/v1/clients", json={"region": "north"}, headers=headers)
    return response.status_code, response.get_json()


def test_a_created_token_registers_and_only_its_hash_is_stored(
    http: FlaskClient, service: CoordinatorService
) -> None:
    created = _create(http, label="line 4", max_uses=2)
    token = str(created["token"])
    assert token.startswith("fedge_")
    assert created["uses"] == 0
    assert created["max_uses"] == 2
    record = service.store.get_enrollment_token(str(created["token_id"]))
    assert record is not None
    assert record.token_hash == hash_token(token)
    assert token not in repr(record)
    assert token not in str(record.to_dict())

    status, registration = _register(http, token)
    assert status == 201, registration
    listed = http.get("/v1/enrollment-tokens", headers=bearer(ADMIN_TOKEN)).get_json()
    assert [(t["token_id"], t["uses"], t["label"]) for t in listed["enrollment_tokens"]] == [
        (created["token_id"], 1, "line 4")
    ]
    assert "token" not in listed["enrollment_tokens"][0]
    assert token not in str(listed)


def test_an_expired_token_is_refused_and_creates_nothing(
    http: FlaskClient, service: CoordinatorService, clock: FakeClock
) -> None:
    token = str(_create(http, expires_in=60)["token"])
    clock.advance(61)
    status, refusal = _register(http, token)
    assert (status, refusal["error"]) == (401, "enrollment_token_expired")
    assert "expired" in refusal["detail"]
    assert service.store.list_clients() == []


def test_a_used_up_token_is_refused_and_creates_nothing(
    http: FlaskClient, service: CoordinatorService
) -> None:
    token = str(_create(http, max_uses=1)["token"])
    assert _register(http, token)[0] == 201
    status, refusal = _register(http, token)
    assert (status, refusal["error"]) == (401, "enrollment_token_used_up")
    assert refusal["detail"].endswith("was used 1 of 1 times")
    assert len(service.store.list_clients()) == 1


def test_a_revoked_token_is_refused_and_creates_nothing(
    http: FlaskClient, service: CoordinatorService
) -> None:
    created = _create(http)
    revoked = http.post(
        f"/v1/enrollment-tokens/{created['token_id']}/revoke", headers=bearer(ADMIN_TOKEN)
    )
    assert revoked.status_code == 200
    assert revoked.get_json()["revoked_at"] is not None
    status, refusal = _register(http, str(created["token"]))
    assert (status, refusal["error"]) == (401, "enrollment_token_revoked")
    assert service.store.list_clients() == []
    missing = http.post("/v1/enrollment-tokens/e-000000000000/revoke", headers=bearer(ADMIN_TOKEN))
    assert (missing.status_code, missing.get_json()["error"]) == (404, "enrollment_token_not_found")


def test_a_retry_with_the_same_key_counts_no_second_use(
    http: FlaskClient, service: CoordinatorService
) -> None:
    created = _create(http, max_uses=1)
    first = _register(http, str(created["token"]), KEY)
    again = _register(http, str(created["token"]), KEY)
    assert (first[0], again[0]) == (201, 200)
    assert first[1]["client_id"] == again[1]["client_id"]
    record = service.store.get_enrollment_token(str(created["token_id"]))
    assert record is not None
    assert record.uses == 1
    assert _register(http, str(created["token"]))[1]["error"] == "enrollment_token_used_up"


def test_the_static_token_keeps_working_and_unknown_tokens_are_refused(
    http: FlaskClient, service: CoordinatorService
) -> None:
    assert _register(http, STATIC)[0] == 201
    status, refusal = _register(http, "fedge_" + "x" * 43)
    assert (status, refusal["error"]) == (401, "invalid_token")
    assert len(service.store.list_clients()) == 1


def test_bad_token_requests_are_refused(http: FlaskClient) -> None:
    for body, code in (
        ({"max_uses": 0}, "invalid_max_uses"),
        ({"max_uses": True}, "invalid_max_uses"),
        ({"expires_in": -1}, "invalid_expiry"),
        ({"label": "\n"}, "invalid_label"),
    ):
        response = http.post("/v1/enrollment-tokens", json=body, headers=bearer(ADMIN_TOKEN))
        assert (response.status_code, response.get_json()["error"]) == (400, code), body
    assert http.get("/v1/enrollment-tokens", headers=bearer(STATIC)).status_code == 401


def test_the_store_counts_uses_in_the_registration_transaction(
    service: CoordinatorService,
) -> None:
    issued = service.create_enrollment_token(max_uses=3)
    for _ in range(3):
        service.register_client(enrollment_token=issued.token)
    with pytest.raises(AuthenticationError) as refused:
        service.register_client(enrollment_token=issued.token)
    assert refused.value.code == "enrollment_token_used_up"
    record = service.store.get_enrollment_token(issued.record.token_id)
    assert record is not None
    assert record.uses == 3
    assert len(service.store.list_clients()) == 3


def test_rotation_gives_a_new_token_and_the_old_one_stops_at_once(
    http: FlaskClient, service: CoordinatorService
) -> None:
    status, registration = _register(http, STATIC)
    assert status == 201
    old = registration["token"]
    rotated = http.post("/v1/clients/me/token", headers=bearer(old))
    assert rotated.status_code == 200, rotated.get_json()
    new = rotated.get_json()["token"]
    assert new != old
    assert rotated.get_json()["client_id"] == registration["client_id"]
    refused = http.get("/v1/tasks/next", headers=bearer(old))
    assert (refused.status_code, refused.get_json()["error"]) == (401, "invalid_token")
    assert http.get("/v1/tasks/next", headers=bearer(new)).status_code == 204
    assert http.post("/v1/clients/me/token", headers=bearer(ADMIN_TOKEN)).status_code == 403
    unknown = http.post("/v1/clients/me/token", json={"token": "mine"}, headers=bearer(new))
    assert unknown.status_code == 400


def test_a_device_may_propose_its_new_token_and_retry_with_it(
    http: FlaskClient, service: CoordinatorService
) -> None:
    _, registration = _register(http, STATIC)
    proposed = "fedge_" + "p" * 43
    first = http.post(
        "/v1/clients/me/token", json={"token": proposed}, headers=bearer(registration["token"])
    )
    assert (first.status_code, first.get_json()["token"]) == (200, proposed)
    retry = http.post("/v1/clients/me/token", json={"token": proposed}, headers=bearer(proposed))
    assert (retry.status_code, retry.get_json()["token"]) == (200, proposed)
    assert http.get("/v1/tasks/next", headers=bearer(registration["token"])).status_code == 401
    client = service.store.get_client(registration["client_id"])
    assert client is not None
    assert client.token_hash == hash_token(proposed)
    for bad in ("fedge_short", "other_" + "p" * 43, 7):
        refused = http.post("/v1/clients/me/token", json={"token": bad}, headers=bearer(proposed))
        assert (refused.status_code, refused.get_json()["error"]) == (400, "invalid_token_proposal")
