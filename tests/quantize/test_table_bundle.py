"""``fedge-quantize bundle`` of a ``fedge-train --data`` export rebuilds the held-out rows
from the recorded file, read against the export's ``schema.json``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import REPO_ROOT
from tests.support.user_tables import write_user_table


def _cli(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip


def test_a_changed_data_file_is_warned_of_and_a_missing_one_refused(tmp_path: Path) -> None:
    data, export = tmp_path / "users.csv", tmp_path / "export"
    write_user_table(data, rows=200)
    trained = _cli("cloud_trainer.cli", "--data", str(data), "--label-column", "churned",
                   "--epochs", "1", "--out", str(export))  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    with open(data, "a", encoding="utf-8") as stream:
        stream.write("40,50000,Oslo,pro,stayed\n")
    changed = _cli("quantize.cli", "bundle", str(export), "--out", str(tmp_path / "b1"))
    assert changed.returncode == 0, changed.stderr
    assert f"{data} changed since training" in changed.stderr
    assert (tmp_path / "b1" / "schema.json").is_file()
    data.unlink()
    gone = _cli("quantize.cli", "bundle", str(export), "--out", str(tmp_path / "b2"))
    assert gone.returncode != 0
    lines = gone.stderr.strip().splitlines()
    assert lines[-1] == (
        f"fedge-quantize: error: the model was trained on {data}, which is gone: the held-out "
        "rows cannot be rebuilt"
    )
    assert not (tmp_path / "b2" / "manifest.json").exists()
