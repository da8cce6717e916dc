"""Fixtures of the dashboard's browser tests: a headless Chromium (one session per module),
a real served coordinator with the dashboard, and its live fleet of devices
(:mod:`tests.support.browser`).

Without ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` the tests skip, saying so; with
``FEDGE_REQUIRE_BROWSER=1`` (``.ci/run`` sets it) they fail instead. The browser's console
log is read after every page and every test: any ``SEVERE`` entry fails the test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException

from tests.support.browser import (
    REGIONS,
    REQUIRE_ENV,
    VIEWER_TOKEN,
    Browser,
    Dashboard,
    Device,
    Fleet,
    browser_missing,
    start_driver,
)
from tests.support.coordinator import (
    ADMIN_TOKEN,
    admin_call,
    make_bundle,
    serve_command,
    start_server,
    stop_server,
    write_admin_token,
)


@pytest.fixture(scope="module")
def chrome() -> Iterator[webdriver.Chrome]:
    missing = browser_missing()
    if missing is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"the browser tests must run here ({REQUIRE_ENV}=1): {missing}")
        pytest.skip(missing)
    try:
        driver = start_driver()
    except WebDriverException as exc:
        pytest.fail(f"Chromium did not start: {exc.msg}")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """A coordinator serving the dashboard (admin and viewer tokens), two clients a round
    (one update is enough: the low region's updates are quarantined after its shifted
    statistics), rounds ticking every 0.2 s, and four devices (one per region) answering
    from the start: a statistics report each (the low region's shifted), then rounds."""
    workdir = tmp_path_factory.mktemp("ui-browser")
    bundle = workdir / "bundle"
    make_bundle(bundle)
    viewer = workdir / "viewer-token"
    viewer.write_text(VIEWER_TOKEN + "\n")
    command = serve_command(
        workdir,
        bundle,
        write_admin_token(workdir),
        "--viewer-token-file", str(viewer),
        "--clients-per-round", "2",
        "--min-clients", "1",
    )  # fmt: skip
    server = start_server(command, workdir)
    fleet = Fleet([])
    try:
        fleet.devices.extend(
            Device(server.url, region, workdir / f"device-{region}") for region in REGIONS
        )
        created = admin_call(
            server.url,
            "POST",
            "/v1/tasks",
            json={"kind": "stats", "client_ids": [d.client_id for d in fleet.devices]},
        )
        assert created.status_code == 201, created.text
        fleet.start()
        yield Dashboard(server, fleet, workdir)
    finally:
        fleet.stop()
        stop_server(server)


@pytest.fixture(scope="module")
def browser(chrome: webdriver.Chrome, dashboard: Dashboard) -> Iterator[Browser]:
    """The browser on the dashboard; at the end its whole console log (every level) goes to
    ``test-artifacts/ui/console.json`` beside the screenshots."""
    browser = Browser(chrome, dashboard.url)
    try:
        yield browser
    finally:
        browser.save_console()


@pytest.fixture
def admin(browser: Browser) -> Browser:
    """The browser logged in with the admin token."""
    return browser.logged_in(ADMIN_TOKEN)


@pytest.fixture(autouse=True)
def _console_clean(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test: no SEVERE console entry, and the fleet ran without errors."""
    yield
    if "browser" in request.fixturenames:
        browser: Browser = request.getfixturevalue("browser")
        browser.check_console(f"the end of {request.node.name}")
    if "dashboard" in request.fixturenames:
        fleet: Fleet = request.getfixturevalue("dashboard").fleet
        assert not fleet.errors, fleet.errors
