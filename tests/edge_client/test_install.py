"""Acceptance 1 (install): ``pip install '.[edge]'`` resolves without TensorFlow.

The declared ``edge`` extra is checked directly, and pip resolves it for real against the
package index (``--dry-run --ignore-installed --report``), so every transitive dependency
a fresh venv would receive is checked too. The resolution runs on a copy of
``pyproject.toml`` because building the metadata writes ``*.egg-info`` beside it.

A failed resolution fails the test ("No matching distribution found for tflite-runtime"
is exactly the failure it exists to catch). It skips only on a machine with no package
index at all, which it decides by asking pip for ``pip`` itself, a distribution every
index carries: when even that is not found, the skip says so. (The daemon itself runs
without TensorFlow in ``test_daemon``, behind an import blocker.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = re.compile(r"^(tensorflow|tf-|tf_|keras|jax|torch)", re.IGNORECASE)


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9._-]+)", requirement)
    assert match, requirement
    return match.group(1)


def test_edge_extra_declares_no_tensorflow() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    edge = [_name(r) for r in project["optional-dependencies"]["edge"]]
    core = [_name(r) for r in project["dependencies"]]
    assert "tflite-runtime" in edge
    assert [n for n in edge + core if FORBIDDEN.match(n)] == []


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
        cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _no_package_index(cwd: Path) -> str | None:
    """Why this machine has no package index (pip finds not even ``pip``), or None."""
    probe = _pip("install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet", "pip",
                 cwd=cwd)  # fmt: skip
    if probe.returncode == 0:
        return None
    return f"pip finds no distribution at all, not even 'pip': {probe.stderr.strip()[-300:]}"


@pytest.mark.slow
def test_pip_resolves_the_edge_extra_without_tensorflow(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, project / name)
    report = tmp_path / "report.json"
    run = _pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
               ".[edge]", cwd=project)  # fmt: skip
    if run.returncode != 0 and (reason := _no_package_index(tmp_path)) is not None:
        pytest.skip(f"no package index on this machine: {reason}")
    assert run.returncode == 0, run.stderr[-3000:]
    installed = {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert [name for name in installed if FORBIDDEN.match(name)] == []
    assert installed["tflite-runtime"] == "2.14.0"
    assert {"fedge", "numpy", "requests", "safetensors"} <= set(installed)
    assert int(installed["numpy"].split(".")[0]) < 2
