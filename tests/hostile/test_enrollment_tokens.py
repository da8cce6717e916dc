"""Managed enrollment on a real server: tokens made with ``fedge-coordinator enrollment``
register devices until they expire, are used up (counted atomically under concurrent
registrations) or are revoked; a device's token rotates, and a revoked client is refused
on its next call."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from coordinator.cli import main
from edge_client.cli import main as edge_main
from tests.support.coordinator import (
    HTTP_TIMEOUT,
    EdgeClient,
    ServerProcess,
    admin_request,
    bearer,
    wait_for,
)
from tests.support.edge import (
    DaemonProcess,
    admin,
    coordinator,
    register,
    start_daemon,
    stop_daemon,
    taxi_rows,
    wait_committed,
    write_csv,
)

pytestmark = pytest.mark.timeout(120)

StartServer = Callable[..., ServerProcess]
STATIC = "enroll-" + "0123456789abcdef" * 2


@pytest.fixture
def server(serve: StartServer, tmp_path: Path) -> ServerProcess:
    token_file = tmp_path / "enrollment-token"
    token_file.write_text(STATIC + "\n")
    return serve("--enrollment-token-file", str(token_file))


def _cli(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str
) -> Any:
    capsys.readouterr()
    code = main([
        "enrollment", *argv, "--coordinator", server.url,
        "--admin-token-file", str(tmp_path / "admin-token"), "--json",
    ])  # fmt: skip
    assert code == 0
    return json.loads(capsys.readouterr().out)


def _register(server: ServerProcess, token: str) -> requests.Response:
    return requests.post(
        f"{server.url}/v1/clients",
        json={"region": "north"},
        headers=bearer(token),
        timeout=HTTP_TIMEOUT,
    )


def _client_count(server: ServerProcess) -> int:
    return len(admin_request(server.url, "/v1/clients")["clients"])


def test_concurrent_registrations_use_a_token_exactly_max_uses_times(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    created = _cli(server, tmp_path, capsys, "create", "--label", "batch 7", "--uses", "5")
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda _: _register(server, created["token"]), range(12)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] * 5 + [401] * 7
    assert {a.json()["error"] for a in answers if a.status_code == 401} == {
        "enrollment_token_used_up"
    }
    assert _client_count(server) == 5
    listed = _cli(server, tmp_path, capsys, "list")
    assert [(t["label"], t["uses"], t["max_uses"]) for t in listed] == [("batch 7", 5, 5)]
    assert created["token"] not in json.dumps(listed)


def test_expired_and_revoked_tokens_are_refused_and_create_nothing(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expiring = _cli(server, tmp_path, capsys, "create", "--expires-in", "1")
    revoked = _cli(server, tmp_path, capsys, "create")
    answer = _cli(server, tmp_path, capsys, "revoke", revoked["token_id"])
    assert answer["revoked_at"] is not None
    time.sleep(1.2)
    for token, code in ((expiring["token"], "enrollment_token_expired"),
                        (revoked["token"], "enrollment_token_revoked")):  # fmt: skip
        refused = _register(server, token)
        assert (refused.status_code, refused.json()["error"]) == (401, code), refused.text
    assert _client_count(server) == 0
    assert _register(server, STATIC).status_code == 201  # the static token is unchanged
    assert _client_count(server) == 1


def test_the_enrollment_cli_refuses_bad_values_before_calling(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([
        "enrollment", "create", "--uses", "0", "--coordinator", server.url,
        "--admin-token-file", str(tmp_path / "admin-token"),
    ])  # fmt: skip
    assert code == 2
    assert "--uses must be at least 1" in capsys.readouterr().err
    assert _cli(server, tmp_path, capsys, "list") == []


def test_a_rotated_token_replaces_the_old_one_at_once(server: ServerProcess) -> None:
    registered = _register(server, STATIC)
    assert registered.status_code == 201
    old = registered.json()["token"]
    rotated = requests.post(
        f"{server.url}/v1/clients/me/token", headers=bearer(old), timeout=HTTP_TIMEOUT
    )
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["token"]
    stale = requests.get(f"{server.url}/v1/tasks/next", headers=bearer(old), timeout=HTTP_TIMEOUT)
    assert (stale.status_code, stale.json()["error"]) == (401, "invalid_token")
    fresh = requests.get(f"{server.url}/v1/tasks/next", headers=bearer(new), timeout=HTTP_TIMEOUT)
    assert fresh.status_code == 204


def test_a_revoked_client_is_refused_on_its_next_call(serve: StartServer) -> None:
    server = serve()
    device = EdgeClient(server.url, "north")
    assert device.poll() is None
    revoked = admin_request(server.url, f"/v1/clients/{device.client_id}/revoke", "POST")
    assert revoked["revoked_at"] is not None
    refused = device.session.get(f"{server.url}/v1/tasks/next", timeout=HTTP_TIMEOUT)
    assert (refused.status_code, refused.json()["error"]) == (401, "client_revoked")
    rotation = device.session.post(f"{server.url}/v1/clients/me/token", timeout=HTTP_TIMEOUT)
    assert (rotation.status_code, rotation.json()["error"]) == (401, "client_revoked")


def _polls(url: str, token: str) -> int:
    return requests.get(
        f"{url}/v1/tasks/next", headers=bearer(token), timeout=HTTP_TIMEOUT
    ).status_code


def test_a_running_daemon_keeps_working_after_rotate_token(
    hostile_taxi_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, state, token_file = tmp_path / "data", tmp_path / "state", tmp_path / "token"
    data.mkdir()
    write_csv(data / "rows.csv", taxi_rows(0, 200))
    daemon: DaemonProcess | None = None
    with coordinator(tmp_path, hostile_taxi_bundle, "taxi") as server:
        try:
            register(server.url, token_file, state)
            daemon = start_daemon(server.url, token_file, data, state)
            wait_for(lambda: (state / "status.json").is_file(), timeout=60)
            old = token_file.read_text().strip()
            capsys.readouterr()
            code = edge_main(["rotate-token", "--coordinator", server.url,
                              "--token-file", str(token_file), "--json"])  # fmt: skip
            assert code == 0, capsys.readouterr().err
            assert json.loads(capsys.readouterr().out)["rotated"] is True
            new = token_file.read_text().strip()
            assert new != old
            assert not (tmp_path / "token.pending").exists()
            assert token_file.stat().st_mode & 0o777 == 0o600
            assert (_polls(server.url, old), _polls(server.url, new)) == (401, 204)
            admin(server.url, "POST", "/v1/rounds", {})
            assert wait_committed(server.url, 1)["num_updates"] == 1
            assert daemon.process.poll() is None, daemon.log()
            assert "the client token changed" in daemon.log()
        finally:
            if daemon is not None:
                stop_daemon(daemon)


def test_rotate_token_finishes_a_rotation_interrupted_after_the_answer(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registered = _register(server, STATIC)
    old = registered.json()["token"]
    token_file, pending = tmp_path / "device-token", tmp_path / "device-token.pending"
    token_file.write_text(old + "\n")
    proposed = "fedge_" + "r" * 43
    pending.write_text(proposed + "\n")  # stored before asking, as rotate-token does
    switched = requests.post(
        f"{server.url}/v1/clients/me/token",
        json={"token": proposed},
        headers=bearer(old),
        timeout=HTTP_TIMEOUT,
    )
    assert switched.status_code == 200  # ... and the device stopped before storing it
    assert _polls(server.url, old) == 401
    code = edge_main(["rotate-token", "--coordinator", server.url,
                      "--token-file", str(token_file)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert token_file.read_text().strip() == proposed
    assert not pending.exists()
    assert _polls(server.url, proposed) == 204
