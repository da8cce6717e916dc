"""The coordinator package's public API is exactly ``coordinator.__all__``, and importing it
pulls in no web framework (the REST adapter is imported only by whoever serves it)."""

from __future__ import annotations

import subprocess
import sys

import coordinator
from tests.support.coordinator import REPO_ROOT


def test_public_names_resolve_and_are_listed() -> None:
    assert [n for n in coordinator.__all__ if not hasattr(coordinator, n)] == []
    public = {
        name
        for name, value in vars(coordinator).items()
        if not name.startswith("_") and not isinstance(value, type(coordinator))
    }
    assert public == set(coordinator.__all__)


def test_importing_the_service_does_not_import_flask() -> None:
    code = "import sys, coordinator; print('flask' in sys.modules, 'waitress' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
