"""Enrollment against a hostile world, on a real server: registration needs the enrollment
token unless the operator opened it, registrations are rate-limited per address and
overall (429 with Retry-After), and ``/metrics`` needs the admin token."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support.coordinator import (
    ADMIN_TOKEN,
    HTTP_TIMEOUT,
    ServerProcess,
    admin_request,
    bearer,
)

pytestmark = pytest.mark.timeout(120)

StartServer = Callable[..., ServerProcess]
ENROLLMENT_TOKEN = "enroll-" + "fedcba9876543210" * 2
DEFAULT_LIMITS = (
    "--registration-rate", "2", "--registration-burst", "20",
    "--registration-rate-total", "50", "--registration-burst-total", "500",
)  # fmt: skip


def _register(server: ServerProcess, token: str | None = None) -> requests.Response:
    headers = bearer(token) if token else {}
    return requests.post(
        f"{server.url}/v1/clients", json={"region": "north"}, headers=headers, timeout=10
    )


def _clients(server: ServerProcess) -> list[dict[str, object]]:
    clients: list[dict[str, object]] = admin_request(server.url, "/v1/clients")["clients"]
    return clients


def test_registration_needs_the_enrollment_token(serve: StartServer, tmp_path: Path) -> None:
    token_file = tmp_path / "enrollment-token"
    token_file.write_text(ENROLLMENT_TOKEN + "\n")
    server = serve("--enrollment-token-file", str(token_file))
    missing = _register(server)
    assert missing.status_code == 401
    assert missing.json()["error"] == "missing_token"
    wrong = _register(server, "enroll-" + "0" * 32)
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_token")
    assert wrong.json()["detail"] == "unknown enrollment token"
    assert _clients(server) == []
    accepted = _register(server, ENROLLMENT_TOKEN)
    assert accepted.status_code == 201, accepted.text
    assert [c["client_id"] for c in _clients(server)] == [accepted.json()["client_id"]]


def test_a_burst_of_200_registrations_from_one_address_is_rate_limited(
    serve: StartServer,
) -> None:
    server = serve(*DEFAULT_LIMITS)
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda _: _register(server), range(200)))
    created = [a for a in answers if a.status_code == 201]
    limited = [a for a in answers if a.status_code == 429]
    assert len(created) + len(limited) == 200
    assert 20 <= len(created) <= 40  # the burst, and what refilled at 2/s meanwhile
    assert all(a.json()["error"] == "rate_limited" for a in limited)
    assert all(int(a.headers["Retry-After"]) >= 1 for a in limited)
    assert "too many registrations; retry in" in limited[0].json()["detail"]
    assert len(_clients(server)) == len(created)
    assert requests.get(f"{server.url}/healthz", timeout=HTTP_TIMEOUT).status_code == 200


def test_registrations_are_rate_limited_overall(serve: StartServer) -> None:
    server = serve("--registration-rate-total", "0.01", "--registration-burst-total", "3")
    assert [_register(server).status_code for _ in range(3)] == [201, 201, 201]
    refused = _register(server)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 60  # 1 / 0.01 s for the next token
    assert len(_clients(server)) == 3


def test_rate_limit_flags_below_their_minimum_are_usage_errors(serve: StartServer) -> None:
    with pytest.raises(AssertionError, match="--registration-rate must be > 0"):
        serve("--registration-rate", "0")


def test_metrics_need_the_admin_token(serve: StartServer) -> None:
    server = serve()
    anonymous = requests.get(f"{server.url}/metrics", timeout=HTTP_TIMEOUT)
    assert (anonymous.status_code, anonymous.json()["error"]) == (401, "missing_token")
    client_token = _register(server).json()["token"]
    as_client = requests.get(f"{server.url}/metrics", headers=bearer(client_token), timeout=10)
    assert (as_client.status_code, as_client.json()["error"]) == (403, "admin_required")
    as_admin = requests.get(f"{server.url}/metrics", headers=bearer(ADMIN_TOKEN), timeout=10)
    assert as_admin.status_code == 200
    assert "fedge_clients" in as_admin.text or "fedge_rounds" in as_admin.text


# Idempotent registration ----------------------------------------------------------------


def _key(i: int) -> str:
    return f"device-{i:04d}-" + "k" * 32


def _register_with_key(
    server: ServerProcess, key: str, *, region: str = "north", timeout: float = 10
) -> requests.Response:
    return requests.post(
        f"{server.url}/v1/clients",
        json={"region": region},
        headers={"Idempotency-Key": key},
        timeout=timeout,
    )


def test_a_retried_registration_returns_the_same_client_and_token(serve: StartServer) -> None:
    server = serve()
    first = _register_with_key(server, _key(1))
    retry = _register_with_key(server, _key(1))
    assert (first.status_code, retry.status_code) == (201, 200)
    assert retry.json() == first.json()
    poll = requests.get(
        f"{server.url}/v1/tasks/next", headers=bearer(retry.json()["token"]), timeout=10
    )
    assert poll.status_code in (200, 204)
    assert [c["client_id"] for c in _clients(server)] == [first.json()["client_id"]]


def test_200_devices_whose_answers_are_lost_leave_exactly_200_clients(
    serve: StartServer,
) -> None:
    server = serve()

    def device(i: int) -> str:
        for attempt in range(50):
            try:  # the first attempts give up before the answer comes: a lost answer
                timeout = 0.005 if attempt < 2 else 10.0
                answer = _register_with_key(server, _key(i), timeout=timeout)
            except requests.RequestException:
                continue
            assert answer.status_code in (200, 201), answer.text
            client_id: str = answer.json()["client_id"]
            return client_id
        raise AssertionError(f"device {i} never registered")

    with ThreadPoolExecutor(max_workers=32) as pool:
        ids = list(pool.map(device, range(200)))
    stored = sorted(str(c["client_id"]) for c in _clients(server))
    assert len(set(ids)) == 200
    assert stored == sorted(ids)
    assert requests.get(f"{server.url}/healthz", timeout=HTTP_TIMEOUT).status_code == 200


def test_a_registration_key_reused_with_another_region_is_a_409(serve: StartServer) -> None:
    server = serve()
    assert _register_with_key(server, _key(2)).status_code == 201
    reused = _register_with_key(server, _key(2), region="south")
    assert reused.status_code == 409
    assert reused.json()["error"] == "registration_key_reused"
    assert "another region or metadata" in reused.json()["detail"]
    assert len(_clients(server)) == 1


@pytest.mark.parametrize("key", ["short", "x" * 129, "has spaces in it" * 4])
def test_a_malformed_registration_key_is_a_400(serve: StartServer, key: str) -> None:
    server = serve()
    answer = _register_with_key(server, key)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_registration_key"
    assert "32-128 characters" in answer.json()["detail"]
    assert _clients(server) == []


def test_fedge_edge_register_run_twice_keeps_one_client(serve: StartServer, tmp_path: Path) -> None:
    from tests.support.edge import register

    server = serve()
    token_file = tmp_path / "device" / "token"
    first = register(server.url, token_file, tmp_path / "device" / "state")
    token = token_file.read_text()
    again = register(server.url, token_file, tmp_path / "device" / "state")
    assert again == first
    assert token_file.read_text() == token
    assert (token_file.parent / "token.registration-key").stat().st_mode & 0o777 == 0o600
    assert [c["client_id"] for c in _clients(server)] == [first]
