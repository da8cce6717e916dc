"""``fedge-edge run`` trains a model of a user's table on the device's own CSV and TFRecord
files, read with the bundle's ``schema.json`` (text labels, categorical columns, gaps)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

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
from tests.support.user_tables import read_tool_runs, write_user_table, write_user_tfrecord


@pytest.fixture(scope="module")
def table_bundle(own_table_runs: Callable[[str], Path]) -> Path:
    """The bundle ``fedge-quantize bundle`` made of ``fedge-train --data users.csv``'s export
    (the session's own-table run; read-only)."""
    workdir = own_table_runs(".csv")
    runs = read_tool_runs(workdir)
    runs["trained"].check()
    runs["bundled"].check()
    return workdir / "bundle"


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
