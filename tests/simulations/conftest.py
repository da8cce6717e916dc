"""Fixtures of the simulation tests: one pretraining cache per session (the digits pretraining
built in it by a background job, ``tests/conftest.py``), settings over it, and the
``fedge-simulate`` CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from simulations.pretrain import PretrainConfig, Pretrained, pretrain
from simulations.settings import Settings
from tests.support import REPO_ROOT
from tests.support.background import BackgroundJobs
from tests.support.simulation import CliRunner, SettingsFactory


@pytest.fixture(scope="session")
def sim_cache(background_jobs: BackgroundJobs) -> Path:
    """The session's simulation cache, where a background job pretrains digits."""
    cache = background_jobs.root / "pretrain-digits"
    cache.mkdir(parents=True, exist_ok=True)
    return cache


@pytest.fixture(scope="session")
def digits_pretrained(sim_cache: Path, background_jobs: BackgroundJobs) -> Pretrained:
    """The digits model pretrained with the default settings, in ``sim_cache``."""
    background_jobs.finished("pretrain-digits")
    return pretrain(PretrainConfig(task="digits"), sim_cache)


@pytest.fixture(scope="session")
def sim_settings(sim_cache: Path) -> SettingsFactory:
    """``sim_settings(**changes)``: default settings over the session cache, changed."""

    def build(**changes: Any) -> Settings:
        return Settings(cache_dir=sim_cache, **changes)

    return build


@pytest.fixture(scope="session")
def fedge_simulate() -> CliRunner:
    """``fedge_simulate(args)``: the CLI in a fresh interpreter, its output captured (a
    process that left a child holding the pipes open would hang here until the timeout)."""

    def run(args: Sequence[str], *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        return subprocess.run(
            [sys.executable, "-m", "simulations.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO_ROOT,
            env=env,
            check=False,
        )

    return run
