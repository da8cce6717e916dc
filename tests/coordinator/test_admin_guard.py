"""Every route of the admin blueprint, with every method it answers, refuses a request
without the admin token (none, a malformed header, an unknown token, a device's token)
with 401/403 and changes nothing in the database or the artifact directory."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from coordinator.auth import hash_token
from coordinator.rest import ApiConfig, create_app
from tests.support.coordinator import ADMIN_TOKEN, build_service, submission

# Values for the admin routes' path parameters that name things that exist, so a view that
# ran would act: round 1 is committed, v2 is a candidate that promote would make production
# (and the world's first device is a client that revoke would revoke, its enrollment
# token one that revoke would revoke).
PLAUSIBLE: dict[str, Any] = {"round_id": 1, "version": "v2"}
BODIES: dict[str, dict[str, Any]] = {
    "admin.create_tasks": {"kind": "stats"},
    "admin.open_round": {"epochs": 2},
}


@dataclass(frozen=True)
class World:
    workdir: Path
    device_token: str
    client_id: str
    token_id: str

    def snapshot(self) -> tuple[list[str], list[tuple[str, int]]]:
        """Every row of the database, and every file of the artifact directory."""
        connection = sqlite3.connect(self.workdir / "state.db")
        try:
            rows = list(connection.iterdump())
        finally:
            connection.close()
        artifacts = self.workdir / "artifacts"
        files = sorted(
            (str(p.relative_to(artifacts)), p.stat().st_size)
            for p in artifacts.rglob("*")
            if p.is_file()
        )
        return rows, files


@pytest.fixture
def world(tmp_path: Path) -> World:
    """v1 in production, round 1 committed with v2 a candidate, two registered devices,
    an enrollment token."""
    service = build_service(tmp_path, continuous=False, auto_promote=False, min_clients=2,
                            clients_per_round=2)  # fmt: skip
    registrations = [service.register_client(region="north") for _ in range(2)]
    enrollment = service.create_enrollment_token(label="guard")
    round_ = service.open_round()
    for i, client_id in enumerate(round_.selected):
        client = service.store.get_client(client_id)
        assert client is not None
        service.submit_update(client, submission(1, client_id, seed=i))
    assert service.get_round(1).state == "committed"
    service.store.close()
    return World(
        tmp_path, registrations[0].token, registrations[0].client_id, enrollment.record.token_id
    )


def _app(world: World, config: ApiConfig) -> Flask:
    service = build_service(world.workdir, continuous=False, auto_promote=False)
    return create_app(service, config)


def _admin_requests(app: Flask, world: World) -> Iterator[tuple[str, str, str]]:
    """(endpoint, method, URL) of every method of every admin-blueprint rule."""
    adapter = app.url_map.bind("localhost")
    plausible = {**PLAUSIBLE, "client_id": world.client_id, "token_id": world.token_id}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.partition(".")[0] != "admin":
            continue
        unknown = rule.arguments - set(plausible)
        assert not unknown, f"add plausible values for {unknown} of {rule.rule} to PLAUSIBLE"
        url = adapter.build(rule.endpoint, {name: plausible[name] for name in rule.arguments})
        for method in sorted(rule.methods or ()):
            yield rule.endpoint, method, url


def _send(app: Flask, endpoint: str, method: str, url: str, headers: dict[str, str]) -> Any:
    body = BODIES.get(endpoint, {}) if method == "POST" else None
    return app.test_client().open(url, method=method, headers=headers, json=body)


CREDENTIALS: dict[str, Any] = {
    "no header": lambda world: {},
    "not bearer": lambda world: {"Authorization": f"Basic {ADMIN_TOKEN}"},
    "empty bearer": lambda world: {"Authorization": "Bearer "},
    "unknown token": lambda world: {"Authorization": "Bearer wrong-" + "x" * 26},
    "device token": lambda world: {"Authorization": f"Bearer {world.device_token}"},
    "admin token with a suffix": lambda world: {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
}


@pytest.mark.parametrize("admin_configured", [True, False], ids=["admin-on", "admin-off"])
@pytest.mark.parametrize("credential", sorted(CREDENTIALS))
def test_every_admin_route_refuses_without_the_admin_token_and_changes_nothing(
    world: World, credential: str, admin_configured: bool
) -> None:
    config = ApiConfig(admin_token_hash=hash_token(ADMIN_TOKEN) if admin_configured else None)
    app = _app(world, config)
    headers = CREDENTIALS[credential](world)
    before = world.snapshot()
    answered = {}
    for endpoint, method, url in _admin_requests(app, world):
        response = _send(app, endpoint, method, url, headers)
        answered[f"{method} {url}"] = response.status_code
        if method != "HEAD":
            assert response.get_json()["error"] in {
                "missing_token", "invalid_token", "admin_required", "admin_disabled",
            }, (method, url, response.get_json())  # fmt: skip
    assert {status for status in answered.values()} <= {401, 403}, answered
    assert len(answered) >= 7 * 2 + 4  # 7 GET rules (and their HEAD), 4 POST rules
    assert world.snapshot() == before


def test_a_device_token_is_refused_with_403_and_an_unknown_one_with_401(world: World) -> None:
    app = _app(world, ApiConfig(admin_token_hash=hash_token(ADMIN_TOKEN)))
    for endpoint, method, url in _admin_requests(app, world):
        device = _send(app, endpoint, method, url, CREDENTIALS["device token"](world))
        unknown = _send(app, endpoint, method, url, CREDENTIALS["unknown token"](world))
        assert (device.status_code, unknown.status_code) == (403, 401), (method, url)


def test_the_same_requests_with_the_admin_token_do_change_the_state(world: World) -> None:
    """The control: the walk above would notice a route that acted."""
    app = _app(world, ApiConfig(admin_token_hash=hash_token(ADMIN_TOKEN)))
    before = world.snapshot()
    statuses = {}
    for endpoint, method, url in _admin_requests(app, world):
        if method == "POST":
            response = _send(app, endpoint, method, url, {"Authorization": f"Bearer {ADMIN_TOKEN}"})
            statuses[endpoint] = response.status_code
    assert statuses["admin.promote"] == 200
    assert statuses["admin.open_round"] == 201
    assert statuses["admin.create_tasks"] == 201
    assert statuses["admin.revoke_client"] == 200
    assert statuses["admin.cancel_round"] == 409  # round 1 is committed
    assert world.snapshot() != before
