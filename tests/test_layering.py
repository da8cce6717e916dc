"""The core and the edge client run in a process where TensorFlow cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support import REPO_ROOT
from tests.support.blocker import TENSORFLOW, prelude

BLOCKER = prelude((*TENSORFLOW, "flask", "sklearn"))


def _run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=False,
    )


def test_blocker_makes_tensorflow_import_fail() -> None:
    result = _run_blocked(
        """
        try:
            import tensorflow
        except ImportError as exc:
            print("blocked:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "blocked: tensorflow is blocked" in result.stdout


def test_core_modules_import_without_frameworks() -> None:
    result = _run_blocked(
        """
        import pkgutil, importlib, fedge
        names = [m.name for m in pkgutil.walk_packages(fedge.__path__, "fedge.")]
        for name in names:
            importlib.import_module(name)
        print(len(names), "modules")
        """
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[0]) >= 5
