"""The dashboard's actions on clients are entries of the registry's history, with the
operator's token id, and the clients page shows them; so are the same REST admin actions."""

from __future__ import annotations

import dataclasses
import hashlib
import re

from flask.testing import FlaskClient

from tests.support.coordinator import ADMIN_TOKEN, bearer
from tests.support.dashboard import Dashboard, csrf_of

ADMIN_ACTOR = "admin:" + hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()[:12]


def _hold(dashboard: Dashboard, client_id: str) -> None:
    store = dashboard.service.store
    (update,) = [u for u in store.list_updates(1) if u.client_id == client_id]
    store.save_update(dataclasses.replace(update, quarantine="anomalies in fare"))


def test_revoke_and_release_on_the_dashboard_are_history_entries_with_the_operator(
    dashboard: Dashboard, admin: FlaskClient
) -> None:
    held, other = dashboard.client_ids
    _hold(dashboard, held)
    csrf = csrf_of(admin, "/ui/clients")
    assert admin.post(f"/ui/clients/{held}/release", data={"csrf_token": csrf}).status_code == 303
    assert admin.post(f"/ui/clients/{other}/revoke", data={"csrf_token": csrf}).status_code == 303
    # A second revocation of the same client changes nothing and records nothing.
    assert admin.post(f"/ui/clients/{other}/revoke", data={"csrf_token": csrf}).status_code == 303
    events = dashboard.service.model_events("")
    assert [(e.kind, e.version, e.actor) for e in events] == [
        ("quarantine_released", "", ADMIN_ACTOR),
        ("client_revoked", "", ADMIN_ACTOR),
    ]
    assert events[0].detail == f"client {held}: 1 update(s) of round(s) 1"
    assert events[1].detail == f"client {other}"
    # No model's history holds them: the versions' REST documents are unchanged.
    assert all(e.version for e in dashboard.service.model_events("v2"))

    html = admin.get("/ui/clients").get_data(as_text=True)
    table = re.search(r'<table id="client-events">(.*?)</table>', html, re.DOTALL)
    assert table is not None
    rows = re.findall(r'<tr data-kind="([a-z_]+)">.*?class="actor">([^<]+)<', table.group(1))
    assert rows == [("client_revoked", ADMIN_ACTOR), ("quarantine_released", ADMIN_ACTOR)]
    assert f"client {other}" in table.group(1)


def test_the_rest_admin_revoke_and_release_record_the_operator(dashboard: Dashboard) -> None:
    held, other = dashboard.client_ids
    _hold(dashboard, held)
    rest = dashboard.app.test_client()
    released = rest.post(f"/v1/quarantine/{held}/release", headers=bearer(ADMIN_TOKEN))
    assert released.status_code == 200
    assert len(released.get_json()["released"]) == 1
    revoked = rest.post(f"/v1/clients/{other}/revoke", headers=bearer(ADMIN_TOKEN))
    assert revoked.status_code == 200
    assert [(e.kind, e.actor) for e in dashboard.service.model_events("")] == [
        ("quarantine_released", ADMIN_ACTOR),
        ("client_revoked", ADMIN_ACTOR),
    ]
    # The registry's documents of the versions carry only their own events.
    shown = rest.get("/v1/models/v2", headers=bearer(ADMIN_TOKEN)).get_json()
    assert {e["kind"] for e in shown["events"]} <= {"registered", "promoted", "rolled_back"}
