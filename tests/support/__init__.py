"""Helpers shared by the test packages: builders, fakes, clients and scripts run as subprocesses.

Test modules import from here (never from another test module); pytest fixtures live in the
``conftest.py`` files beside the tests that use them.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root (the directory holding ``pyproject.toml``)."""

SUPPORT_DIR = Path(__file__).resolve().parent
"""This package's directory, where the subprocess scripts (launcher, probes) live."""
