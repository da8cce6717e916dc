"""``fedge-quantize bundle`` of a ``fedge-train --data`` export rebuilds the held-out rows
from the recorded file, read against the export's ``schema.json``.

The tools run as their own processes in the session's ``changed_table_run`` background job:
train on a table, change the table, bundle, delete the table, bundle again.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.user_tables import read_tool_runs


def test_a_changed_data_file_is_warned_of_and_a_missing_one_refused(
    changed_table_run: Path,
) -> None:
    runs = read_tool_runs(changed_table_run)
    data = changed_table_run / "users.csv"
    trained = runs["trained"]
    assert trained.returncode == 0, trained.stderr
    changed = runs["changed"]
    assert changed.returncode == 0, changed.stderr
    assert f"{data} changed since training" in changed.stderr
    assert (changed_table_run / "b1" / "schema.json").is_file()
    gone = runs["gone"]
    assert gone.returncode != 0
    lines = gone.stderr.strip().splitlines()
    assert lines[-1] == (
        f"fedge-quantize: error: the model was trained on {data}, which is gone: the held-out "
        "rows cannot be rebuilt"
    )
    assert not (changed_table_run / "b2" / "manifest.json").exists()
