"""``fedge-edge run`` trains a model of a user's table on the device's own CSV and TFRecord
files, read with the bundle's ``schema.json`` (text labels, categorical columns, gaps)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO_ROOT
from tests.support.edge import (
    admin,
    coordinator,
    register,
    start_daemon,
    stop_daemon,
    store_counts,
    wait_committed,
    write_csv,
)
from tests.support.user_tables import write_user_table, write_user_tfrecord


def _cli(module: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{module} {args}: {result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def table_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("table-bundle")
    write_user_table(root / "users.csv")
    _cli("cloud_trainer.cli", "--data", str(root / "users.csv"), "--label-column", "churned",
         "--epochs", "1", "--out", str(root / "export"))  # fmt: skip
    _cli("quantize.cli", "bundle", str(root / "export"), "--out", str(root / "bundle"))
    return root / "bundle"


def test_the_daemon_trains_on_csv_and_tfrecord_spans_of_a_user_table(
    table_bundle: Path, tmp_path: Path
) -> None:
    data, state = tmp_path / "data", tmp_path / "state"
    data.mkdir()
    rows = write_user_table(tmp_path / "all.csv", rows=200, seed=11)
    write_csv(data / "a.csv", rows[:100])
    write_user_tfrecord(data / "b.tfrecord", rows[100:])
    token = tmp_path / "token"
    daemon = None
    with coordinator(tmp_path, table_bundle, "table", "--min-cohort", "1") as server:
        try:
            register(server.url, token, state)
            daemon = start_daemon(server.url, token, data, state)
            admin(server.url, "POST", "/v1/rounds", {})
            round_one = wait_committed(server.url, 1)
            assert stop_daemon(daemon) == 0
        finally:
            if daemon is not None:
                stop_daemon(daemon)
    log = daemon.log()
    assert "skipping data file" not in log, log[-3000:]
    assert "data span a.csv: 100 rows" in log
    assert "data span b.tfrecord: 100 rows" in log
    assert round_one["state"] == "committed"
    assert store_counts(tmp_path)["updates"] == 1
