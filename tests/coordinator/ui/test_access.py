"""Who may see and do what on the dashboard: login, the session cookie, logout, CSRF on
every POST, viewer versus admin, and the security headers of every response."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from coordinator.ui.app import CONTENT_SECURITY_POLICY
from tests.support.coordinator import ADMIN_TOKEN
from tests.support.dashboard import VIEWER_TOKEN, Dashboard, csrf_of, login_post

PAGES = ("/ui/", "/ui/rounds", "/ui/models", "/ui/clients", "/ui/data", "/ui/alerts")
ACTIONS = (
    "/ui/models/v1/promote",
    "/ui/models/rollback",
    "/ui/clients/{client}/revoke",
    "/ui/clients/{client}/release",
)


def _actions(dashboard: Dashboard) -> list[str]:
    return [a.format(client=dashboard.client_ids[0]) for a in ACTIONS]


def _state(dashboard: Dashboard) -> tuple[str, list[bool], int]:
    store = dashboard.service.store
    revoked = [c.revoked for c in store.list_clients()]
    return dashboard.production(), revoked, len(store.list_model_events())


@pytest.mark.parametrize("path", [*PAGES, "/ui/fragments/overview", "/ui/charts/accuracy.svg"])
def test_a_get_without_a_session_is_sent_to_the_login_page(dashboard: Dashboard, path: str) -> None:
    answer = dashboard.app.test_client().get(path)
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/ui/login"


def test_an_action_without_a_session_is_refused_and_changes_nothing(dashboard: Dashboard) -> None:
    before = _state(dashboard)
    browser = dashboard.app.test_client()
    for path in _actions(dashboard):
        assert browser.post(path, data={"csrf_token": "x"}).status_code == 403, path
    assert _state(dashboard) == before


def _session_cookies(answer: TestResponse) -> list[str]:
    return [c for c in answer.headers.getlist("Set-Cookie") if c.startswith("fedge_session=")]


def test_an_unknown_token_gets_no_session(dashboard: Dashboard) -> None:
    browser = dashboard.app.test_client()
    answer = login_post(browser, ADMIN_TOKEN + "x")
    assert answer.status_code == 200  # the form again, with the error
    assert "unknown token" in answer.get_data(as_text=True)
    assert _session_cookies(answer) == []
    assert browser.get("/ui/").status_code == 303


def test_login_sets_an_httponly_strict_cookie_that_holds_no_token(dashboard: Dashboard) -> None:
    answer = login_post(dashboard.app.test_client(), ADMIN_TOKEN)
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/ui/"
    [cookie] = _session_cookies(answer)
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "max-age"} <= attributes
    assert "SameSite=Strict" in cookie
    assert "Path=/ui" in cookie
    assert "secure" not in attributes  # plain HTTP here; serve sets Secure with TLS
    assert cookie.startswith("fedge_session=")
    assert ADMIN_TOKEN not in cookie


def test_logout_ends_the_session(admin: FlaskClient) -> None:
    answer = admin.post("/ui/logout", data={"csrf_token": csrf_of(admin)})
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/ui/login"
    assert admin.get("/ui/").status_code == 303


def test_logout_without_the_csrf_token_keeps_the_session(admin: FlaskClient) -> None:
    assert admin.post("/ui/logout").status_code == 403
    assert admin.get("/ui/").status_code == 200


@pytest.mark.parametrize("token", ["missing", "wrong", "another session's"])
def test_an_action_without_its_sessions_csrf_token_is_refused_and_changes_nothing(
    dashboard: Dashboard, admin: FlaskClient, token: str
) -> None:
    other = dashboard.login(ADMIN_TOKEN)
    sent = {"missing": {}, "wrong": {"csrf_token": "x" * 43}}.get(
        token, {"csrf_token": csrf_of(other)}
    )
    before = _state(dashboard)
    for path in _actions(dashboard):
        answer = admin.post(path, data=sent)
        assert answer.status_code == 403, path
        assert "CSRF" in answer.get_data(as_text=True)
    assert _state(dashboard) == before


def test_a_viewer_sees_no_action_and_may_not_post_one(
    dashboard: Dashboard, viewer: FlaskClient
) -> None:
    for page in ("/ui/models", "/ui/clients"):
        html = viewer.get(page).get_data(as_text=True)
        assert 'class="promote"' not in html
        assert 'id="rollback"' not in html
        assert 'class="revoke"' not in html
        assert 'class="release"' not in html
    csrf = csrf_of(viewer)
    before = _state(dashboard)
    for path in _actions(dashboard):
        answer = viewer.post(path, data={"csrf_token": csrf})
        assert answer.status_code == 403, path
        assert "admin token" in answer.get_data(as_text=True)
    assert _state(dashboard) == before


def test_the_admin_sees_the_action_buttons(admin: FlaskClient) -> None:
    models = admin.get("/ui/models").get_data(as_text=True)
    assert '<button type="submit" id="rollback">' in models
    assert 'class="promote" data-version="v1"' in models  # archived: can be promoted again
    assert 'class="promote" data-version="v2"' not in models  # production
    assert models.count('class="revoke"') == 0
    assert admin.get("/ui/clients").get_data(as_text=True).count('class="revoke"') == 2


_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\ssrc=)[^>]*>", re.IGNORECASE)


@pytest.mark.parametrize("path", [*PAGES, "/ui/login", "/ui/fragments/overview"])
def test_every_page_has_the_strict_headers_and_no_inline_script_or_style(
    admin: FlaskClient, path: str
) -> None:
    if path == "/ui/login":
        assert admin.get(path).status_code == 303  # logged in already: to the overview
        answer = admin.application.test_client().get(path)
    else:
        answer = admin.get(path)
    assert answer.status_code == 200
    assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    html = answer.get_data(as_text=True)
    assert not _INLINE_SCRIPT.search(html)
    assert "<style" not in html
    assert " style=" not in html
    assert "javascript:" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers


def test_static_files_and_errors_carry_the_policy_too(admin: FlaskClient) -> None:
    for path, status in (("/ui/static/live.js", 200), ("/ui/fragments/nope", 404)):
        answer = admin.get(path)
        assert answer.status_code == status
        assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_a_viewer_token_logs_in_as_a_viewer(viewer: FlaskClient) -> None:
    role = viewer.get("/ui/").get_data(as_text=True)
    assert 'id="role" class="role">viewer · viewer:' in role
    assert VIEWER_TOKEN not in role
