"""The login form: a pre-session CSRF token (a signed double-submit cookie) and a limit
on failed logins per source address."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from coordinator.ui.app import LOGIN_COOKIE
from tests.support.coordinator import ADMIN_TOKEN
from tests.support.dashboard import Dashboard, csrf_of, login_post


def _no_session(browser: FlaskClient) -> bool:
    return browser.get("/ui/").status_code == 303


def test_the_login_form_sets_a_strict_httponly_pre_session_cookie(dashboard: Dashboard) -> None:
    answer = dashboard.app.test_client().get("/ui/login")
    [cookie] = [c for c in answer.headers.getlist("Set-Cookie") if c.startswith(LOGIN_COOKIE)]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/ui/login" in cookie
    nonce = cookie.split(";")[0].split("=", 1)[1]
    assert nonce not in answer.get_data(as_text=True)  # the form holds its signature only


@pytest.mark.parametrize("forgery", ["no token", "wrong token", "no cookie", "another form's"])
def test_a_forged_login_post_is_refused_and_opens_no_session(
    dashboard: Dashboard, forgery: str
) -> None:
    browser = dashboard.app.test_client()
    csrf = csrf_of(browser, "/ui/login")
    if forgery == "no cookie":
        browser.delete_cookie(LOGIN_COOKIE, path="/ui/login")
    sent = {
        "no token": {},
        "wrong token": {"csrf_token": "0" * 64},
        "no cookie": {"csrf_token": csrf},
        "another form's": {"csrf_token": csrf_of(dashboard.app.test_client(), "/ui/login")},
    }[forgery]
    answer = browser.post("/ui/login", data={"token": ADMIN_TOKEN, **sent})
    assert answer.status_code == 403
    assert 'id="login-error"' in answer.get_data(as_text=True)
    assert not any(c.startswith("fedge_session=") for c in answer.headers.getlist("Set-Cookie"))
    assert _no_session(browser)
    # The page it answers is a fresh form: logging in from it works.
    assert login_post(browser, ADMIN_TOKEN).status_code == 303
    assert not _no_session(browser)


def test_a_burst_of_wrong_tokens_is_refused_until_the_limit_refills(dashboard: Dashboard) -> None:
    attacker = dashboard.app.test_client()
    statuses = [login_post(attacker, f"guess-{n}").status_code for n in range(12)]
    assert statuses == [200] * 10 + [429] * 2
    # Past the limit even the right token is refused from that address, before it is looked at.
    refused = login_post(attacker, ADMIN_TOKEN)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert "too many failed logins" in refused.get_data(as_text=True)
    assert _no_session(attacker)
    # Another address is not affected, and good logins never count.
    for _ in range(12):
        elsewhere = dashboard.app.test_client()
        elsewhere.environ_base["REMOTE_ADDR"] = "10.0.0.2"
        assert login_post(elsewhere, ADMIN_TOKEN).status_code == 303
