"""Fixtures of the quantizer tests: trained exports of the two reference tasks, built once per
session (read-only: copy an export before changing it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.trained_models import train_export


@pytest.fixture(scope="session")
def digits_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export of the digits CNN (read-only)."""
    return train_export("digits", tmp_path_factory.mktemp("trained") / "digits")


@pytest.fixture(scope="session")
def taxi_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export of the taxi MLP (read-only)."""
    return train_export("taxi", tmp_path_factory.mktemp("trained") / "taxi")
