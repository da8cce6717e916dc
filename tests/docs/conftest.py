"""Fixtures of the manual's tests: the session's digits pretraining cache, which a page's
`fedge-simulate --task digits` run finds in its output folder instead of pretraining again
(a second run reuses the cache in the same way)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.pretrain import PretrainConfig, pretrain
from tests.support.background import BackgroundJobs


@pytest.fixture(scope="session")
def digits_pretrained(background_jobs: BackgroundJobs) -> Path:
    """The folder holding the digits model pretrained with the default settings."""
    cache = background_jobs.root / "pretrain-digits"
    cache.mkdir(parents=True, exist_ok=True)
    background_jobs.finished("pretrain-digits")
    pretrain(PretrainConfig(task="digits"), cache)
    return cache
