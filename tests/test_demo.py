"""The core demo learns: federated rounds lift test accuracy well above chance."""

from __future__ import annotations

import json
from pathlib import Path

from simulations.demo import main, run_demo


def test_demo_federated_rounds_learn_above_chance() -> None:
    summary = run_demo(rounds=3, num_clients=5, alpha=0.5, seed=1)
    history = summary["accuracy"]
    assert isinstance(history, dict)
    assert set(history) == {"fedavg", "fedadam", "median"}
    assert history["fedavg"][-1] > 0.6  # ten classes: chance is 0.1
    assert history["fedavg"][-1] >= history["fedavg"][0]


def test_demo_main_writes_summary(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--rounds", "2", "--clients", "4"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert len(summary["client_sizes"]) == 4
    assert summary["bytes_up"] > 0
