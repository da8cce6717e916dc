"""The dashboard on a real coordinator (``fedge-coordinator serve`` with a viewer token):
login through waitress's header check, pages, a forged action, the body limit of its
forms, and no token in the log."""

from __future__ import annotations

import re
from pathlib import Path

import requests

from coordinator.ui.app import CONTENT_SECURITY_POLICY
from tests.support.coordinator import (
    ADMIN_TOKEN,
    HTTP_TIMEOUT,
    make_bundle,
    running_server,
    serve_command,
    write_admin_token,
)
from tests.support.dashboard import VIEWER_TOKEN


def _login_csrf(login_form: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', login_form)
    assert found is not None, "no CSRF token in the login form"
    return found.group(1)


def test_a_served_coordinator_serves_the_dashboard(tmp_path: Path) -> None:
    make_bundle(tmp_path / "bundle")
    viewer_file = tmp_path / "viewer-token"
    viewer_file.write_text(VIEWER_TOKEN + "\n")
    command = serve_command(
        tmp_path,
        tmp_path / "bundle",
        write_admin_token(tmp_path),
        "--viewer-token-file",
        str(viewer_file),
        "--ui-behind-seconds",
        "90",
    )
    with running_server(command, tmp_path) as server:
        url = server.url
        browser = requests.Session()
        first = browser.get(f"{url}/ui/", timeout=HTTP_TIMEOUT)
        assert first.url == f"{url}/ui/login"
        assert first.status_code == 200
        assert first.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        huge = browser.post(f"{url}/ui/login", data={"token": "x" * 20_000}, timeout=HTTP_TIMEOUT)
        assert huge.status_code == 413
        login = browser.post(
            f"{url}/ui/login",
            data={"token": VIEWER_TOKEN, "csrf_token": _login_csrf(first.text)},
            timeout=HTTP_TIMEOUT,
        )
        assert login.status_code == 200
        assert login.url == f"{url}/ui/"
        assert re.search(r'id="current-round"', login.text)
        for page in ("rounds", "models", "clients", "data", "alerts"):
            answer = browser.get(f"{url}/ui/{page}", timeout=HTTP_TIMEOUT)
            assert answer.status_code == 200, page
            assert 'class="promote"' not in answer.text
            assert 'id="rollback"' not in answer.text
            if page == "clients":
                assert "no call for more than 90 s" in answer.text
        admin = requests.Session()
        form = admin.get(f"{url}/ui/login", timeout=HTTP_TIMEOUT).text
        admin.post(
            f"{url}/ui/login",
            data={"token": ADMIN_TOKEN, "csrf_token": _login_csrf(form)},
            timeout=HTTP_TIMEOUT,
        )
        assert 'id="rollback"' in admin.get(f"{url}/ui/models", timeout=HTTP_TIMEOUT).text
        # The admin's own cookie without the form's CSRF token: refused before the rollback
        # runs (which would answer 409 no_previous_version here).
        forged = requests.post(
            f"{url}/ui/models/rollback",
            cookies=admin.cookies,
            timeout=HTTP_TIMEOUT,
            allow_redirects=False,
        )
        assert forged.status_code == 403
        assert "CSRF" in forged.text
        health = requests.get(f"{url}/healthz", timeout=HTTP_TIMEOUT)
        assert health.json()["model_version"] == "v1"  # the forged rollback changed nothing
        log = server.log()
    assert VIEWER_TOKEN not in log
    assert ADMIN_TOKEN not in log
    assert "dashboard: viewer:" in log
