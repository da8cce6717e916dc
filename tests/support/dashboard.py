"""Helpers of the dashboard tests: a coordinator app with the dashboard (v1, then v2 in
production after round 1, two clients in regions north and south), logins and the CSRF
token of a page."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from coordinator.auth import hash_token
from coordinator.rest import ApiConfig, create_app
from coordinator.service import CoordinatorService
from coordinator.ui import UiConfig
from tests.support.coordinator import ADMIN_TOKEN, build_service, submission

VIEWER_TOKEN = "viewer-" + "fedcba9876543210" * 2
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass(frozen=True)
class Dashboard:
    app: Flask
    service: CoordinatorService
    client_ids: tuple[str, ...]

    def login(self, token: str) -> FlaskClient:
        """A browser logged in with ``token`` through the login form."""
        browser = self.app.test_client()
        answer = login_post(browser, token)
        assert answer.status_code == 303, answer.get_data(as_text=True)
        return browser

    def production(self) -> str:
        return self.service.registry.production().version


def login_post(browser: FlaskClient, token: str) -> TestResponse:
    """Load the login form (its pre-session CSRF cookie and token), then post ``token``."""
    return browser.post(
        "/ui/login", data={"token": token, "csrf_token": csrf_of(browser, "/ui/login")}
    )


def csrf_of(browser: FlaskClient, page: str = "/ui/") -> str:
    """The CSRF token in the forms of ``page``."""
    found = _CSRF.search(browser.get(page).get_data(as_text=True))
    assert found is not None, f"no CSRF token on {page}"
    return found.group(1)


def build_dashboard(workdir: Path) -> Dashboard:
    service = build_service(
        workdir, continuous=False, auto_promote=True, min_clients=2, clients_per_round=2
    )
    clients = [service.register_client(region=region) for region in ("north", "south")]
    round_ = service.open_round()
    for i, client_id in enumerate(round_.selected):
        client = service.store.get_client(client_id)
        assert client is not None
        service.submit_update(client, submission(1, client_id, seed=i))
    assert service.get_round(1).state == "committed"
    app = create_app(
        service,
        ApiConfig(admin_token_hash=hash_token(ADMIN_TOKEN)),
        ui=UiConfig(viewer_token_hash=hash_token(VIEWER_TOKEN)),
    )
    return Dashboard(app, service, tuple(c.client_id for c in clients))
