"""The outputs of a run, from hand-made results: files, CSV cells, JSON, the summary table."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedge.weights import Weights
from simulations.report import (
    CSV_COLUMNS,
    ClientGain,
    EngineResult,
    Evaluation,
    RoundStats,
    RunReport,
    summary_table,
    write_report,
)


def _report(*, engine: str = "native", rounds: int = 3, traffic: bool = True) -> RunReport:
    stats = tuple(
        RoundStats(
            round=r,
            accuracy=0.80 + 0.05 * r,
            loss=None if engine == "tff" else 0.5 - 0.1 * r,
            participants=4,
            bytes_up=1000 * r if traffic else None,
            bytes_down=2048 if traffic else None,
            seconds=0.5,
            train_loss=0.6,
            auc=0.9,
            version=f"v{r + 1}",
            clients=("a", "b", "c", "d"),
        )
        for r in range(1, rounds + 1)
    )
    gains = (ClientGain("a", 10, 0.8, 0.9), ClientGain("b", 5, 0.6, 0.4))
    head = Weights({"head/kernel": np.ones((2, 2), np.float32)})
    return RunReport(
        settings={"task": "taxi", "clients": 4},
        result=EngineResult(engine, stats, head, gains if engine == "native" else (), 2.0),
        pretrained=Evaluation(0.8, 0.6, 0.90),
        final=Evaluation(0.95, 0.2, 0.95),
        centralized=Evaluation(0.96, 0.18, 0.96),
        centralized_epochs=3,
        schedule=(("a", "b", "c", "d"),) * rounds,
    )


def test_write_report_writes_every_file(tmp_path: Path) -> None:
    paths = write_report(_report(), tmp_path / "out")
    assert sorted(paths) == sorted(
        [
            "metrics.json",
            "metrics.csv",
            "summary.txt",
            "accuracy.png",
            "personalization.png",
            "final_head.safetensors",
        ]
    )
    for path in paths.values():
        assert path.stat().st_size > 0
    assert Weights.from_bytes(paths["final_head.safetensors"].read_bytes()).names == (
        "head/kernel",
    )
    document = json.loads(paths["metrics.json"].read_text())
    assert document["headline_metric"] == "auc"
    assert document["rounds_per_second"] == pytest.approx(1.5)
    assert document["personalization"]["mean_gain"] == pytest.approx(-0.05)
    assert [r["round"] for r in document["rounds"]] == [1, 2, 3]


def test_csv_has_the_documented_columns_and_blank_unknowns(tmp_path: Path) -> None:
    paths = write_report(_report(engine="tff", traffic=False), tmp_path)
    with open(paths["metrics.csv"], newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[0]["loss"] == rows[0]["bytes_up"] == rows[0]["bytes_down"] == ""
    assert float(rows[2]["accuracy"]) == pytest.approx(0.95)
    assert "personalization.png" not in paths  # the TFF engine measures none


def test_summary_puts_each_figure_beside_its_baselines() -> None:
    table = summary_table(_report())
    assert "test auc" in table
    lines = {line.split()[0]: line for line in table.splitlines() if line.strip()}
    assert lines["pretrained"].split()[-2:] == ["0.9000", "+0.0500"]
    assert lines["centralized"].split()[-2:] == ["0.9600", "-0.0100"]
    assert lines["federated"].split()[-1] == "0.9500"
    assert "5.9 KiB up" in table
    assert "mean -0.0500, median -0.0500" in table


def test_summary_elides_the_middle_of_long_runs() -> None:
    table = summary_table(_report(rounds=40), max_rounds=6)
    numbers = [line.split()[0] for line in table.splitlines()[3:10]]
    assert numbers == ["1", "2", "3", "...", "38", "39", "40"]
    assert math.isclose(_report(rounds=40).result.rounds_per_second, 20.0)
