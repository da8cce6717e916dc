"""The operator's dashboard in a real headless Chromium against a real served coordinator
with a live fleet: login, live round counter and chart, a region's alert, rollback by the
button (and the devices then training the previous version), the viewer's read-only pages,
a forged POST refused; a 1366x768 screenshot of every page in ``test-artifacts/ui/``.

The tests share one browser session and one coordinator, and each also runs alone (the
``admin`` fixture logs in when needed). The rollback and the forged POSTs stop the fleet,
so they come after the live ones.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

from coordinator.auth import actor_id
from fedge.messages import Task
from tests.support.browser import (
    LOW_REGION,
    REGIONS,
    VIEWER_TOKEN,
    Browser,
    Dashboard,
    Device,
    accuracy_of_round,
    sha256_of,
    wait_until,
)
from tests.support.coordinator import (
    ADMIN_TOKEN,
    HTTP_TIMEOUT,
    admin_call,
    admin_request,
    production_digest,
)

pytestmark = pytest.mark.slow

ACTIONS = "button.promote, button#rollback, button.revoke, button.release"


def _current_round(browser: Browser) -> int:
    return int(browser.attribute("#current-round", "data-round") or 0)


def _production(url: str) -> dict[str, Any]:
    """The production version's registry document, from the admin REST API."""
    models: list[dict[str, Any]] = admin_request(url, "/v1/models")["models"]
    (model,) = (m for m in models if m["stage"] == "production")
    return model


def _settled_production(url: str) -> dict[str, Any]:
    """The production version once it stopped changing: with the fleet stopped, a round
    whose updates were all in still commits at the next tick (0.2 s)."""
    last = [_production(url)]

    def settled() -> dict[str, Any] | None:
        time.sleep(0.5)
        current = _production(url)
        if current["version"] == last[0]["version"]:
            return current
        last[0] = current
        return None

    result: dict[str, Any] = wait_until(settled, "the production version to settle")
    return result


def test_login_refuses_an_unknown_token_and_admits_the_admin(browser: Browser) -> None:
    browser.driver.delete_all_cookies()
    browser.open("/ui/")
    assert browser.path == "/ui/login"
    browser.screenshot("login")
    browser.find("#token").send_keys("not-a-token")
    browser.find("#login").click()
    browser.until(lambda b: b.find_all("#login-error"), "the login error")
    assert browser.find("#login-error").text == "unknown token"
    # the refusal is the form again with its error, not an HTTP error: the console stays clean
    browser.check_console("the refused login")
    assert browser.driver.get_cookie("fedge_session") is None

    browser.login(ADMIN_TOKEN)
    assert browser.find("#role").text.startswith("admin")
    cookie = browser.driver.get_cookie("fedge_session")
    assert cookie is not None
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/ui")
    assert ADMIN_TOKEN not in cookie["value"]


def test_overview_round_counter_advances_without_a_reload(admin: Browser) -> None:
    admin.open("/ui/")
    first = _current_round(admin)
    marker = admin.mark()
    admin.until(lambda b: _current_round(b) >= first + 2, "the round counter to advance")
    assert admin.marked() == marker, "the page was reloaded"
    current, state, text = admin.driver.execute_script(
        "var e = document.querySelector('#current-round');"
        "return [e.getAttribute('data-round'), e.getAttribute('data-state'), e.textContent];"
    )
    assert int(current) >= first + 2
    assert text == f"round {current}: {state}"
    assert "selected" in admin.find("#participants").text
    assert "updates/min" in admin.find("#throughput").text
    assert admin.find("#alerts-summary").is_displayed()
    assert admin.find("#production-version").text.startswith("v")
    assert admin.find_all("#privacy-budget")
    admin.screenshot("overview")


def test_rounds_table_and_accuracy_chart_advance_without_a_reload(admin: Browser) -> None:
    admin.open("/ui/rounds")
    key = admin.attribute("#accuracy-chart", "data-key")
    newest = int(admin.attribute("#rounds-table tbody tr", "data-round") or 0)
    marker = admin.mark()
    admin.until(
        lambda b: (
            b.attribute("#accuracy-chart", "data-key") != key
            and int(b.attribute("#rounds-table tbody tr", "data-round") or 0) > newest
        ),
        "the chart and the rounds table to advance",
    )
    assert admin.marked() == marker, "the page was reloaded"
    admin.until(
        lambda b: b.driver.execute_script(
            "var i = document.querySelector('#accuracy-chart');"
            "return i !== null && i.complete && i.naturalWidth > 0;"
        ),
        "the new chart to load",
    )
    # the table shows what the devices reported for each committed round
    committed = admin.rows("#rounds-table tbody tr[data-state=committed]", "data-round")
    assert committed
    for round_id, cells in committed:
        assert f"{accuracy_of_round(int(round_id)):.4f}" in cells, (round_id, cells)
    regions = {key for key, _ in admin.rows("#region-accuracy tr[data-region]", "data-region")}
    assert regions & set(REGIONS)
    admin.screenshot("rounds")
    admin.check_console("/ui/rounds after its live updates")


def test_an_alert_for_a_region_fires_and_shows_on_the_alerts_page(
    admin: Browser, dashboard: Dashboard
) -> None:
    admin.open("/ui/alerts")
    drop = f"#alerts-table tr[data-kind=accuracy_drop][data-region={LOW_REGION}]"
    assert admin.find_all(drop) == []
    (low,) = (d for d in dashboard.fleet.devices if d.region == LOW_REGION)
    created = admin_call(
        dashboard.url,
        "POST",
        "/v1/tasks",
        json={"kind": "evaluate", "client_ids": [low.client_id]},
    )
    assert created.status_code == 201, created.text
    wait_until(
        lambda: admin_request(dashboard.url, "/v1/alerts?kind=accuracy_drop")["alerts"],
        "the accuracy_drop alert",
    )
    admin.open("/ui/alerts")
    (row,) = admin.find_all(drop)
    assert LOW_REGION in row.text
    (drift,) = admin.find_all("#alerts-table tr[data-kind=data_drift]")
    assert low.client_id in drift.text  # the shifted statistics came from that device
    admin.screenshot("alerts")


def test_models_clients_and_data_pages_show_their_tables_and_paginate(
    admin: Browser, dashboard: Dashboard
) -> None:
    wait_until(lambda: len(admin_request(dashboard.url, "/v1/models")["models"]) >= 3, "two rounds")
    # the low region's updates after its shifted statistics are held in quarantine
    (low,) = (d for d in dashboard.fleet.devices if d.region == LOW_REGION)
    quarantine = f"/v1/quarantine?client_id={low.client_id}"
    wait_until(lambda: admin_request(dashboard.url, quarantine)["updates"], "a quarantined update")
    admin.open("/ui/models")
    versions = [
        r.get_attribute("data-version") for r in admin.find_all("#models-table tr[data-version]")
    ]
    assert len(versions) >= 3
    assert admin.find_all("#lineage li[data-version]")
    assert admin.find_all("button.promote[data-version]")
    assert admin.find("button#rollback").is_displayed()
    admin.screenshot("models")

    admin.open("/ui/clients")
    rows = admin.find_all("#clients-table tr[data-client]")
    assert {r.get_attribute("data-region") for r in rows} == set(REGIONS)
    assert len(admin.find_all("button.revoke")) == len(REGIONS)
    assert any("(round " in cell.text for cell in admin.find_all("#clients-table td.last-update"))
    assert admin.find_all(f"button.release[data-client={low.client_id}]")
    admin.screenshot("clients")

    admin.open("/ui/clients?page=1&per_page=3")
    first_page = {
        r.get_attribute("data-client") for r in admin.find_all("#clients-table tr[data-client]")
    }
    assert len(first_page) == 3
    assert admin.find_all("nav.pagination a[rel=prev]") == []
    admin.find("nav.pagination a[rel=next]").click()
    admin.until(lambda b: "page=2" in b.path, "page 2")
    admin.wait_loaded()
    admin.check_console("/ui/clients page 2")
    second_page = {
        r.get_attribute("data-client") for r in admin.find_all("#clients-table tr[data-client]")
    }
    assert len(second_page) == 1
    assert not first_page & second_page
    assert admin.find_all("nav.pagination a[rel=prev]")

    admin.open("/ui/data")
    assert len(admin.find_all("#stats-table tr[data-report]")) == len(REGIONS)
    assert admin.find_all("#drift-table tr[data-feature=fare]")
    chart = admin.find("#drift-chart")
    assert admin.driver.execute_script("return arguments[0].naturalWidth > 0;", chart)
    assert admin.find_all("#feature-stats tr[data-feature=fare]")
    admin.screenshot("data")


def test_rollback_button_rolls_back_and_devices_then_get_the_previous_version(
    admin: Browser, dashboard: Dashboard
) -> None:
    dashboard.fleet.stop()
    production = _settled_production(dashboard.url)
    current, previous = str(production["version"]), str(production["parent"])
    admin.open("/ui/models")
    assert admin.find(f"tr[data-version={current}]").get_attribute("data-stage") == "production"
    admin.find("button#rollback").click()
    admin.until(
        lambda b: (
            b.path == "/ui/models"
            and b.find(f"tr[data-version={previous}]").get_attribute("data-stage") == "production"
        ),
        f"{previous} in production",
    )
    admin.wait_loaded()
    admin.check_console("/ui/models after the rollback")
    assert admin.find(f"tr[data-version={current}]").get_attribute("data-stage") != "production"
    (event,) = admin.find_all("#model-events tr[data-kind=rolled_back]")
    assert event.find_element("css selector", ".actor").text == actor_id("admin", ADMIN_TOKEN)
    admin.screenshot("models-rolled-back")
    assert _production(dashboard.url)["version"] == previous

    # The devices' next polls: a train task on the previous version, whose bundle they
    # download and verify.
    def next_train_task() -> tuple[Device, Task] | None:
        for device in dashboard.fleet.devices:
            task = device.poll()
            if task is not None and task.kind == "train":
                return device, task
        return None

    device, task = wait_until(next_train_task, "a train task after the rollback")
    assert task.model_version == previous
    bundle = device.fetch(previous)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model_version"] == previous
    model = admin_request(dashboard.url, f"/v1/models/{previous}")
    assert sha256_of(bundle / "weights.safetensors") == model["artifacts"]["weights.safetensors"]
    # the registry's history names the operator's token, as the REST API serves it too
    rolled_back = [e for e in model["events"] if e["kind"] == "rolled_back"]
    assert [e["actor"] for e in rolled_back] == [actor_id("admin", ADMIN_TOKEN)]


def test_a_forged_post_without_the_csrf_token_is_refused_and_changes_nothing(
    browser: Browser, dashboard: Dashboard
) -> None:
    browser.login(ADMIN_TOKEN)
    session = browser.driver.get_cookie("fedge_session")
    assert session is not None
    dashboard.fleet.stop()  # nothing else changes production meanwhile
    version = _settled_production(dashboard.url)["version"]
    digest = production_digest(dashboard.url)
    client_id = dashboard.fleet.devices[0].client_id
    for form in ({}, {"csrf_token": "forged"}):
        for action in ("/ui/models/rollback", f"/ui/clients/{client_id}/revoke"):
            answer = requests.post(
                dashboard.url + action,
                data=form,
                cookies={"fedge_session": session["value"]},
                allow_redirects=False,
                timeout=HTTP_TIMEOUT,
            )
            assert answer.status_code == 403, (action, form, answer.status_code)
    assert _production(dashboard.url)["version"] == version
    assert production_digest(dashboard.url) == digest
    (client,) = (
        c
        for c in admin_request(dashboard.url, "/v1/clients")["clients"]
        if c["client_id"] == client_id
    )
    assert client["revoked_at"] is None
    browser.open("/ui/models")
    assert browser.find(f"tr[data-version={version}]").get_attribute("data-stage") == "production"


def test_a_viewer_sees_no_action_buttons(browser: Browser) -> None:
    browser.login(VIEWER_TOKEN)
    assert browser.find("#role").text.startswith("viewer")
    for page in ("/ui/", "/ui/rounds", "/ui/models", "/ui/clients", "/ui/data", "/ui/alerts"):
        browser.open(page)
        assert browser.find_all(ACTIONS) == [], page
        forms = browser.find_all("form[method=post]")
        assert [f.get_attribute("action") for f in forms] == [browser.base_url + "/ui/logout"], page
    browser.open("/ui/models")
    assert browser.find_all("#models-table tr[data-version]")
    browser.screenshot("models-viewer")
