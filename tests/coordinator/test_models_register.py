"""``fedge-coordinator models register BUNDLE``: a bundle as a candidate version, on the
database directly (created when absent), its name written to ``--version-file``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fedge.cli import ExitCode
from tests.support import REPO_ROOT
from tests.support.coordinator import make_bundle


def _coordinator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=False,
    )


def test_register_creates_the_registry_and_a_candidate_that_promote_deploys(
    tmp_path: Path,
) -> None:
    make_bundle(tmp_path / "b1", seed=1)
    make_bundle(tmp_path / "b2", seed=2)
    target = ["--db", str(tmp_path / "state.db"), "--artifacts", str(tmp_path / "artifacts")]

    first = _coordinator(
        "models", "register", str(tmp_path / "b1"), *target,
        "--version-file", str(tmp_path / "version"), "--json",
    )  # fmt: skip

    assert first.returncode == ExitCode.OK, first.stderr
    assert (tmp_path / "version").read_text() == "v1"
    assert json.loads(first.stdout)["stage"] == "candidate"  # never promoted, not even the first
    assert _coordinator("models", "promote", "v1", *target).returncode == ExitCode.OK
    second = _coordinator("models", "register", str(tmp_path / "b2"), *target, "--json")
    assert second.returncode == ExitCode.OK, second.stderr
    document = json.loads(second.stdout)
    assert (document["version"], document["stage"], document["parent"]) == ("v2", "candidate", "v1")
    listed = _coordinator("models", "list", *target, "--json")
    stages = [(m["version"], m["stage"]) for m in json.loads(listed.stdout)]
    assert stages == [("v1", "production"), ("v2", "candidate")]


def test_register_refuses_a_remote_target_and_a_missing_bundle(tmp_path: Path) -> None:
    make_bundle(tmp_path / "bundle")
    remote = _coordinator(
        "models", "register", str(tmp_path / "bundle"), "--coordinator", "http://127.0.0.1:9"
    )
    missing = _coordinator(
        "models", "register", str(tmp_path / "nope"),
        "--db", str(tmp_path / "state.db"), "--artifacts", str(tmp_path / "artifacts"),
    )  # fmt: skip

    assert remote.returncode == ExitCode.USAGE
    assert remote.stderr.strip() == (
        "fedge-coordinator: error: models register works on the database directly "
        "(--db and --artifacts), not on --coordinator"
    )
    assert missing.returncode == ExitCode.USAGE
    assert f"bundle {tmp_path / 'nope'} is not a directory" in missing.stderr
    assert not (tmp_path / "state.db").exists()
    assert not (tmp_path / "artifacts").exists()
