"""Fixtures of the edge-client tests: real edge bundles of the two reference tasks, built once
per session (read-only: copy a bundle before changing it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bundles import build_bundle


@pytest.fixture(scope="session")
def edge_digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits CNN bundle (read-only: copy it before changing it)."""
    return build_bundle(
        "digits", tmp_path_factory.mktemp("edge-digits"), batch_size=32, version="digits-v1"
    )


@pytest.fixture(scope="session")
def edge_taxi_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A taxi MLP bundle (read-only: copy it before changing it)."""
    return build_bundle(
        "taxi", tmp_path_factory.mktemp("edge-taxi"), batch_size=16, version="taxi-v1"
    )
