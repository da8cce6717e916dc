"""A newcomer's path: the "simulate your own model" tutorial, followed exactly.

Its blocks run in order in an empty folder, as a reader would type them: a CSV table and a
Keras model made by the page's own code (not shipped with the project), plain safetensors
initial weights, a partition and a schedule file, one `fedge-simulate` run; then the test
checks what the page says the run leaves behind.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.support import docblocks

PAGE = docblocks.DOCS / "tutorials" / "own-model.md"


@pytest.mark.slow
def test_the_own_model_tutorial_runs_as_written(tmp_path: Path) -> None:
    outputs = docblocks.run_page(PAGE, tmp_path)
    made = {p.name for p in tmp_path.iterdir()}
    assert {"train.csv", "test.csv", "model.keras", "init.safetensors"} <= made
    assert {"partition.json", "schedule.json", "sim"} <= made

    report = json.loads((tmp_path / "sim" / "metrics.json").read_text())
    rounds = report["rounds"]
    schedule = json.loads((tmp_path / "schedule.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert [sorted(r["clients"]) for r in rounds] == [sorted(names) for names in schedule]
    assert all(r["committed"] for r in rounds)
    # three separable classes: the federated model beats chance on the test file
    assert rounds[-1]["accuracy"] > 0.6

    with (tmp_path / "test.csv").open() as table:
        test_rows = sum(1 for _ in csv.DictReader(table))
    assert test_rows == 120

    init = load_file(str(tmp_path / "init.safetensors"))
    names = ["hidden/bias", "hidden/kernel", "out/bias", "out/kernel"]
    assert sorted(init) == names
    saved = sorted((tmp_path / "sim" / "weights").iterdir())
    assert [p.name for p in saved] == [f"round-000{n}.safetensors" for n in (1, 2, 3)]
    last = load_file(str(saved[-1]))
    assert sorted(last) == names
    assert all(last[n].shape == init[n].shape for n in names)
    assert not np.array_equal(last["hidden/kernel"], init["hidden/kernel"])  # it trained
    # the page's last runnable block printed every round and the weights' shapes
    assert "'hidden/kernel': (4, 16)" in outputs[-1]
