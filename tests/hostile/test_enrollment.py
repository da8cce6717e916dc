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
