"""Fixtures of the quantizer tests: trained exports of the two reference tasks, built once per
session by background jobs (``tests/conftest.py``; read-only: copy an export before changing
it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.background import BackgroundJobs


@pytest.fixture(scope="session")
def digits_export(background_jobs: BackgroundJobs) -> Path:
    """An export of the digits CNN (read-only)."""
    return background_jobs.finished("digits-export") / "export"


@pytest.fixture(scope="session")
def taxi_export(background_jobs: BackgroundJobs) -> Path:
    """An export of the taxi MLP (read-only)."""
    return background_jobs.finished("taxi-export") / "export"
