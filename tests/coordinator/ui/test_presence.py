"""Each client's last authenticated call and its transport: written to the store at most
once a minute per client (or when the transport changes), shown on /ui/clients with a
"falling behind" marker past the threshold."""

from __future__ import annotations

import re
from typing import cast

from flask.testing import FlaskClient

from tests.support.coordinator import FakeClock, bearer
from tests.support.dashboard import Dashboard


def _row(html: str, client_id: str) -> str:
    found = re.search(rf'<tr data-client="{client_id}"(.*?)</tr>', html, re.DOTALL)
    assert found is not None, client_id
    return found.group(1)


def test_a_polling_client_is_written_once_a_minute_with_its_transport(
    dashboard: Dashboard,
) -> None:
    service = dashboard.service
    clock = cast(FakeClock, service.now)
    device = service.register_client(region="east")
    client = service.authenticate(device.token)
    rest = dashboard.app.test_client()

    def poll() -> None:
        assert rest.get("/v1/tasks/next", headers=bearer(device.token)).status_code in (200, 204)

    start = clock()
    poll()
    assert service.store.clients_seen([device.client_id]) == {device.client_id: (start, "rest")}
    clock.advance(30)
    poll()
    poll()  # within the minute: nothing written
    assert service.store.clients_seen([device.client_id])[device.client_id] == (start, "rest")
    service.client_seen(client, "grpc")  # another transport is written at once
    assert service.store.clients_seen([device.client_id])[device.client_id] == (
        start + 30,
        "grpc",
    )
    clock.advance(61)
    poll()
    assert service.store.clients_seen([device.client_id])[device.client_id] == (
        start + 91,
        "rest",
    )


def test_the_clients_page_shows_last_seen_transport_and_who_falls_behind(
    dashboard: Dashboard, admin: FlaskClient
) -> None:
    service = dashboard.service
    clock = cast(FakeClock, service.now)
    device = service.register_client(region="east")
    assert dashboard.app.test_client().get(
        "/v1/tasks/next", headers=bearer(device.token)
    ).status_code in (200, 204)
    row = _row(admin.get("/ui/clients").get_data(as_text=True), device.client_id)
    assert 'data-behind="false"' in row
    assert re.search(r'class="last-seen">[0-9-]+ [0-9:]+<', row)
    assert 'class="transport">rest<' in row
    assert "falling behind" not in row

    clock.advance(601)  # past the default 600 s threshold
    service.revoke_client(dashboard.client_ids[1])
    html = admin.get("/ui/clients").get_data(as_text=True)
    late = _row(html, device.client_id)
    assert 'data-behind="true" class="behind"' in late
    assert '<span class="behind-marker">falling behind</span>' in late
    never = _row(html, dashboard.client_ids[0])  # registered long ago, never seen
    assert 'class="last-seen">never' in never
    assert 'data-behind="true"' in never
    assert 'data-behind="false"' in _row(html, dashboard.client_ids[1])  # revoked
