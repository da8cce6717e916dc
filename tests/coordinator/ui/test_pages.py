"""What the dashboard shows and does: each page's elements, pagination, the live fragments,
the charts, and the actions (through the same service calls as REST, recorded with the
operator's token id)."""

from __future__ import annotations

import hashlib
import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from coordinator.auth import hash_token
from coordinator.records import AlertRecord, ClientRecord, ReportRecord
from coordinator.rest import ApiConfig, create_app
from coordinator.ui import UiConfig
from tests.support.coordinator import ADMIN_TOKEN, bearer, build_service, training_stats
from tests.support.dashboard import Dashboard, csrf_of, login_post

ADMIN_ACTOR = "admin:" + hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()[:12]

PAGE_ELEMENTS = {
    "/ui/": ['id="current-round"', 'id="participants"', 'id="throughput"', 'id="alerts-summary"'],
    "/ui/rounds": ['id="rounds-table"', 'img id="accuracy-chart"', 'id="region-accuracy"'],
    "/ui/models": ['id="models-table"', 'id="lineage"', 'tr data-version="v1"'],
    "/ui/clients": ['id="clients-table"'],
    "/ui/data": ['id="stats-table"', 'img id="drift-chart"'],
    "/ui/alerts": ['id="alerts-table"'],
}


@pytest.mark.parametrize("path", sorted(PAGE_ELEMENTS))
def test_each_page_has_its_elements(admin: FlaskClient, path: str) -> None:
    html = admin.get(path).get_data(as_text=True)
    for element in PAGE_ELEMENTS[path]:
        assert element in html, f"{path} lacks {element}"


def test_the_overview_shows_the_current_round_and_its_participants(
    dashboard: Dashboard, admin: FlaskClient
) -> None:
    html = admin.get("/ui/").get_data(as_text=True)
    assert re.search(r'id="current-round"[^>]*>round 1: committed<', html)
    assert re.search(r'id="participants">2 selected, 2 updates in<', html)
    assert 'id="production-version">v2<' in html
    dashboard.service.open_round()
    fragment = admin.get("/ui/fragments/overview").get_data(as_text=True)
    assert re.search(r'id="current-round"[^>]*>round 2: collecting<', fragment)
    assert "<html" not in fragment


def test_the_rounds_page_shows_accuracy_per_round_and_per_region(admin: FlaskClient) -> None:
    html = admin.get("/ui/rounds").get_data(as_text=True)
    row = re.search(r'<tr data-round="1" data-state="committed">(.*?)</tr>', html, re.DOTALL)
    assert row is not None
    assert "<td>v2</td>" in row.group(1)
    assert "0.7500" in row.group(1)  # the round's accuracy (the updates' metrics)
    assert '<tr data-region="north"><td>north</td>' in html


def test_the_accuracy_chart_changes_with_the_rounds(
    dashboard: Dashboard, admin: FlaskClient
) -> None:
    first = admin.get("/ui/fragments/accuracy-chart").get_data(as_text=True)
    source = re.search(r'src="(/ui/charts/accuracy\.svg\?v=\w+)"', first)
    assert source is not None
    svg = admin.get(source.group(1))
    assert svg.status_code == 200
    assert svg.mimetype == "image/svg+xml"
    assert svg.get_data(as_text=True).lstrip().startswith(("<?xml", "<svg"))
    dashboard.service.open_round()
    assert admin.get("/ui/fragments/accuracy-chart").get_data(as_text=True) != first


@pytest.mark.parametrize("name", ["accuracy", "regions", "drift"])
def test_charts_are_svg_without_inline_style(admin: FlaskClient, name: str) -> None:
    answer = admin.get(f"/ui/charts/{name}.svg")
    assert answer.status_code == 200
    svg = answer.get_data(as_text=True)
    assert "<svg" in svg
    assert "<path" in svg
    assert "<style" not in svg
    assert " style=" not in svg
    assert "<script" not in svg


def test_the_rollback_button_rolls_back_and_records_the_operator(
    dashboard: Dashboard, admin: FlaskClient
) -> None:
    assert dashboard.production() == "v2"
    answer = admin.post("/ui/models/rollback", data={"csrf_token": csrf_of(admin)})
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/ui/models"
    assert dashboard.production() == "v1"
    event = dashboard.service.model_events("v1")[-1]
    assert (event.kind, event.previous, event.actor) == ("rolled_back", "v2", ADMIN_ACTOR)
    html = admin.get("/ui/models").get_data(as_text=True)
    assert f'<td class="actor">{ADMIN_ACTOR}</td>' in html
    # REST shows the same history, actor included.
    document = dashboard.app.test_client().get("/v1/models/v1", headers=bearer(ADMIN_TOKEN))
    assert document.get_json()["events"][-1]["actor"] == ADMIN_ACTOR


def test_the_promote_button_promotes_that_version(dashboard: Dashboard, admin: FlaskClient) -> None:
    csrf = csrf_of(admin, "/ui/models")
    answer = admin.post("/ui/models/v1/promote", data={"csrf_token": csrf})
    assert answer.status_code == 303
    assert dashboard.production() == "v1"
    assert dashboard.service.model_events("v1")[-1].actor == ADMIN_ACTOR


def test_a_refused_action_shows_why_and_changes_nothing(
    dashboard: Dashboard, admin: FlaskClient
) -> None:
    csrf = csrf_of(admin)
    assert admin.post("/ui/models/rollback", data={"csrf_token": csrf}).status_code == 303
    again = admin.post("/ui/models/rollback", data={"csrf_token": csrf})
    assert again.status_code == 409
    assert "no_previous_version" in again.get_data(as_text=True)
    assert again.mimetype == "text/html"
    assert dashboard.production() == "v1"
    missing = admin.post("/ui/models/v9/promote", data={"csrf_token": csrf})
    assert missing.status_code == 404
    assert dashboard.production() == "v1"


def test_rest_admin_promotions_record_the_token_id(dashboard: Dashboard) -> None:
    rest = dashboard.app.test_client()
    answer = rest.post("/v1/models/v1/promote", headers=bearer(ADMIN_TOKEN))
    assert answer.status_code == 200
    assert answer.get_json()["events"][-1]["actor"] == ADMIN_ACTOR
    answer = rest.post("/v1/models/rollback", headers=bearer(ADMIN_TOKEN), json={})
    assert answer.get_json()["events"][-1]["actor"] == ADMIN_ACTOR


def test_revoke_and_release_act_on_the_client(dashboard: Dashboard, admin: FlaskClient) -> None:
    target = dashboard.client_ids[1]
    csrf = csrf_of(admin, "/ui/clients")
    assert admin.post(f"/ui/clients/{target}/release", data={"csrf_token": csrf}).status_code == 303
    assert admin.post(f"/ui/clients/{target}/revoke", data={"csrf_token": csrf}).status_code == 303
    revoked = dashboard.service.store.get_client(target)
    assert revoked is not None
    assert revoked.revoked
    html = admin.get("/ui/clients").get_data(as_text=True)
    row = re.search(rf'<tr data-client="{target}"(.*?)</tr>', html, re.DOTALL)
    assert row is not None
    assert re.search(r'class="last-update">[0-9-]+ [0-9:]+ \(round 1\)<', row.group(1))
    assert html.count('class="revoke"') == 1  # the revoked client has no button any more


def test_alert_rows_carry_their_region(dashboard: Dashboard, admin: FlaskClient) -> None:
    dashboard.service.store.add_alert(
        AlertRecord(
            0, "accuracy_drop", "warning", "north dropped", 5.0, details={"region": "north"}
        )
    )
    html = admin.get("/ui/alerts").get_data(as_text=True)
    assert 'data-kind="accuracy_drop" data-region="north"' in html
    assert 'data-alerts="1"' in admin.get("/ui/").get_data(as_text=True)


@pytest.fixture
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    service = build_service(tmp_path_factory.mktemp("crowded"))
    with service.store.transaction():
        for n in range(120):
            service.store.add_client(ClientRecord(f"c{n:04d}", f"hash{n}", float(n)))
    return create_app(service, ApiConfig(admin_token_hash=hash_token(ADMIN_TOKEN)), ui=UiConfig())


def _rows(html: str) -> list[str]:
    return re.findall(r'<tr data-client="(c\d+)"', html)


def test_lists_paginate(crowded: Flask) -> None:
    browser = crowded.test_client()
    assert login_post(browser, ADMIN_TOKEN).status_code == 303
    first = browser.get("/ui/clients").get_data(as_text=True)
    assert _rows(first) == [f"c{n:04d}" for n in range(50)]
    assert '<a rel="next" href="/ui/clients?page=2">' in first
    assert 'rel="prev"' not in first
    last = browser.get("/ui/clients?page=3").get_data(as_text=True)
    assert _rows(last) == [f"c{n:04d}" for n in range(100, 120)]
    assert 'rel="prev"' in last
    assert 'rel="next"' not in last
    sized = browser.get("/ui/clients?page=2&per_page=7").get_data(as_text=True)
    assert _rows(sized) == [f"c{n:04d}" for n in range(7, 14)]
    assert 'href="/ui/clients?page=3&amp;per_page=7"' in sized
    capped = browser.get("/ui/clients?per_page=1000").get_data(as_text=True)
    assert len(_rows(capped)) == 120
    assert "page 1 of 1" in capped
    past_the_end = browser.get("/ui/clients?page=99").get_data(as_text=True)
    assert "page 3 of 3" in past_the_end
    for bad in ("page=0", "page=x", "per_page=-1"):
        answer = browser.get(f"/ui/clients?{bad}")
        assert answer.status_code == 400, bad
        assert "positive integer" in answer.get_data(as_text=True)


def test_the_openapi_document_leaves_the_dashboard_out(dashboard: Dashboard) -> None:
    from coordinator.openapi import build_openapi

    document = build_openapi()
    assert not [p for p in document["paths"] if p.startswith("/ui")]
    served = {r.rule for r in dashboard.app.url_map.iter_rules()}
    assert "/ui/login" in served
    documented = {re.sub(r"\{(\w+)\}", r"<\1>", p) for p in document["paths"]}
    rest = {re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", r) for r in served if not r.startswith("/ui")}
    assert rest == documented


def test_the_data_page_summarises_the_newest_statistics(
    dashboard: Dashboard, admin: FlaskClient
) -> None:
    stats = training_stats(fare_mean=12.5)
    document = stats.to_dict()
    dashboard.service.store.add_report(ReportRecord(0, "stats", "c1", "t1", 1.0, document=document))
    html = admin.get("/ui/data").get_data(as_text=True)
    fare = re.search(r'<tr data-feature="fare">(.*?)</tr>', html, re.DOTALL)
    assert fare is not None
    cells = re.findall(r"<td>([^<]*)</td>", fare.group(1))
    assert cells[:3] == ["fare", "numeric", str(stats.num_rows)]
    assert float(cells[4]) == pytest.approx(stats.columns["fare"].mean, rel=1e-3)
    assert '<tr data-report="1">' in html


def test_the_overview_shows_the_privacy_spent(admin: FlaskClient) -> None:
    html = admin.get("/ui/").get_data(as_text=True)
    # The fixture's rounds train without differential privacy: no epsilon bounds them.
    assert 'id="privacy-budget">no DP guarantee<' in html
    assert "no budget set" in html
