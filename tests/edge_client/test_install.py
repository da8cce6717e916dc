"""Acceptance 1 (install): ``pip install '.[edge]'`` resolves without TensorFlow.

The declared ``edge`` extra is checked directly, and pip installs it for real from the
package index into an empty target directory (``--ignore-installed --target --report``),
so every transitive dependency a fresh venv would receive is checked too; the test prints
the installed size (every distribution, fedge's ``fedge`` and ``edge_client`` packages
included) and imports the device's code, the gRPC messages included, from that directory
alone. The install runs on a copy of the project because building it writes
``*.egg-info`` beside ``pyproject.toml``.

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


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.slow
def test_pip_installs_the_edge_extra_without_tensorflow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project, site = tmp_path / "project", tmp_path / "site"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, project / name)
    for package in ("fedge", "edge_client"):  # what a device runs
        shutil.copytree(
            REPO / package, project / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    report = tmp_path / "report.json"
    run = _pip("install", "--ignore-installed", "--no-warn-conflicts", "--quiet", "--target",
               str(site), "--report", str(report), ".[edge]", cwd=project)  # fmt: skip
    if run.returncode != 0 and (reason := _no_package_index(tmp_path)) is not None:
        pytest.skip(f"no package index on this machine: {reason}")
    assert run.returncode == 0, run.stderr[-3000:]
    installed = {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert [name for name in installed if FORBIDDEN.match(name)] == []
    assert installed["tflite-runtime"] == "2.14.0"
    assert {"fedge", "numpy", "requests", "safetensors", "grpcio", "protobuf"} <= set(installed)
    assert int(installed["numpy"].split(".")[0]) < 2
    assert installed["protobuf"].startswith("4.25.")
    assert not [p.name for p in site.iterdir() if FORBIDDEN.match(p.name)]
    # The device's code imports from the target alone (no site-packages: python -S).
    probe = (
        f"import sys; sys.path.insert(0, {str(site)!r}); "
        "import edge_client.cli, edge_client.transport, fedge.protocol.fleet_pb2, grpc; "
        "import importlib.util as u; print(u.find_spec('tensorflow') is None)"
    )
    imported = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert imported.stdout.strip() == "True"
    total = _tree_bytes(site)
    own = sum(_tree_bytes(site / package) for package in ("fedge", "edge_client"))
    assert 0 < own < total
    with capsys.disabled():
        print(
            f"\n'pip install .[edge]' installs {total / 2**20:.1f} MiB in {len(installed)} "
            f"distributions (fedge and edge_client {own / 2**20:.2f} MiB), no TensorFlow"
        )
