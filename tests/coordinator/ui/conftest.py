"""Fixtures of the dashboard tests: the app of :func:`tests.support.dashboard.build_dashboard`
and Flask test clients logged in as the admin or the viewer."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tests.support.coordinator import ADMIN_TOKEN
from tests.support.dashboard import VIEWER_TOKEN, Dashboard, build_dashboard


@pytest.fixture
def dashboard(tmp_path: Path) -> Dashboard:
    return build_dashboard(tmp_path)


@pytest.fixture
def admin(dashboard: Dashboard) -> FlaskClient:
    return dashboard.login(ADMIN_TOKEN)


@pytest.fixture
def viewer(dashboard: Dashboard) -> FlaskClient:
    return dashboard.login(VIEWER_TOKEN)
