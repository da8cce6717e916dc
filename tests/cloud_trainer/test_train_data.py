"""``fedge-train --data FILE --label-column COL``: a user's own table, end to end."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_trainer.cli import build_parser
from cloud_trainer.config import TABLE_TASK, TrainConfig
from cloud_trainer.data import prepare_table_data, split_task
from fedge.data import load_schema_json, read_table
from fedge.errors import ConfigError
from fedge.features import FeatureSpec

CLI_TIMEOUT_S = 300


def _run(*args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "cloud_trainer.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def _write_table(path: Path, rows: int = 300, seed: int = 3) -> Path:
    """``color`` decides the text label; ``size`` (unscaled) and ``city`` (gaps) are noise."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["size", "color", "city", "blank", "verdict"])
        for i in range(rows):
            color = ["red", "blue", "green"][i % 3]
            city = "" if i % 7 == 0 else str(rng.choice(["Oslo", "Lima", "Pune"]))
            size = "" if i % 11 == 0 else f"{rng.uniform(0, 900):.1f}"
            verdict = "" if i == 5 else ("keep" if color == "red" else "drop")
            writer.writerow([size, color, city, "", verdict])
    return path


def test_data_and_task_are_exclusive_and_data_is_not_data_fraction() -> None:
    args = build_parser().parse_args(
        ["--data=t.csv", "--label-column=y", "--epochs=1", "--out=o", "--data-fraction=0.5"]
    )
    assert (args.data, args.task, args.data_fraction) == ("t.csv", None, 0.5)
    args = build_parser().parse_args(["--task=taxi", "--epochs=1", "--out=o"])
    assert (args.data, args.task, args.data_fraction) == (None, "taxi", 1.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs=1"], "one of the arguments --task --data is required"),
        (["--task=taxi", "--data=t.csv", "--epochs=1"], "--data: not allowed with argument --task"),
        (["--data=t.csv", "--epochs=1"], "--data needs --label-column"),
        (["--task=taxi", "--epochs=1", "--label-column=y"], "need --data"),
        (["--task=taxi", "--epochs=1", "--ablation"], "need --data"),
        (
            [
                "--data=t.csv",
                "--label-column=verdict",
                "--epochs=1",
                "--ablation",
                "--strategy=mirrored",
            ],
            "ablation runs with the default strategy only",
        ),
        (["--data=t.txt", "--label-column=y", "--epochs=1"], "unknown table format"),
        (["--data=nothere.csv", "--label-column=y", "--epochs=1"], "nothere.csv: no such file"),
    ],
)
def test_bad_data_arguments_exit_2_with_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    _write_table(tmp_path / "t.csv", rows=20)
    (tmp_path / "t.txt").write_text("a,b\n1,2\n")
    args = [a.replace("t.csv", str(tmp_path / "t.csv")) for a in args]
    args = [a.replace("t.txt", str(tmp_path / "t.txt")) for a in args]
    result = _run(*args, f"--out={tmp_path / 'out'}", timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fedge-train: error: ")
    assert message in lines[0]


def test_a_column_problem_is_one_error_line(tmp_path: Path) -> None:
    path = _write_table(tmp_path / "t.csv", rows=20)
    result = _run(f"--data={path}", "--label-column=nope", "--epochs=1", f"--out={tmp_path}/o")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == [
        "fedge-train: error: no label column 'nope'; the file has "
        "['size', 'color', 'city', 'blank', 'verdict']"
    ]


def test_config_refuses_column_options_without_data() -> None:
    with pytest.raises(ConfigError, match="label and column options apply"):
        TrainConfig(task="taxi", out_dir="o", exclude=("fare",))
    with pytest.raises(ConfigError, match="task 'table', not 'taxi'"):
        TrainConfig(task="taxi", out_dir="o", data_path="t.csv", label_column="y")


def test_table_data_split_is_rebuilt_from_the_schema(tmp_path: Path) -> None:
    path = _write_table(tmp_path / "t.csv", rows=60)
    data, table = prepare_table_data(str(path), label_column="verdict", seed=4, test_fraction=0.25)
    assert data.task == TABLE_TASK
    assert table.label_names == ("drop", "keep")
    reread = read_table(path, table.schema, table.label_names)
    train, test = split_task(reread, test_fraction=0.25, seed=4)
    assert train.fingerprint() == data.fingerprint
    np.testing.assert_array_equal(test.labels, data.y_test)


@pytest.fixture(scope="module")
def data_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any, str]:
    root = tmp_path_factory.mktemp("own-data")
    path = _write_table(root / "own.csv")
    out = root / "out"
    result = _run(
        f"--data={path}",
        "--label-column=verdict",
        "--epochs=3",
        "--learning-rate=0.01",
        "--seed=1",
        "--ablation",
        "--json",
        "--quiet",
        f"--out={out}",
    )
    assert result.returncode == 0, result.stderr
    return path, out, json.loads(result.stdout), result.stderr


def test_data_run_exports_schema_spec_and_record(data_run: tuple[Path, Path, Any, str]) -> None:
    path, out, outcome, _ = data_run
    schema, names = load_schema_json(out / "schema.json")
    assert names == ("drop", "keep")
    assert schema.numeric == ("size",)
    assert schema.categorical == ("color", "city")
    assert schema.label == "verdict"
    spec = FeatureSpec.from_json((out / "feature_spec.json").read_text())
    assert [f.name for f in spec.features] == ["size", "color", "city"]
    record = outcome["record"]
    assert record["task"] == TABLE_TASK
    assert record["model"] == "table_mlp"
    assert record["data_file"] == str(path)
    assert record["data_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["label_column"] == "verdict"
    assert record["artifacts"]["schema"] == "schema.json"
    assert record["num_train_examples"] + record["num_test_examples"] == 299
    assert record["metrics"]["test_accuracy"] > 0.9  # the colour decides the label


def test_data_run_warns_on_stderr(data_run: tuple[Path, Path, Any, str]) -> None:
    stderr = data_run[3]
    assert "WARNING" in stderr
    assert "dropped 1 of 300 rows with no label (column 'verdict')" in stderr
    assert "column 'blank' is empty in every row; it is left out" in stderr
    assert "rows have empty fields (columns size, city)" in stderr
    assert "column 'size' spans" in stderr
    assert "it will be standardized" in stderr


def test_ablation_ranks_the_deciding_feature_first(data_run: tuple[Path, Path, Any, str]) -> None:
    _, out, outcome, _ = data_run
    report = json.loads((out / "ablation.json").read_text())
    assert report == outcome["ablation"]
    assert report["metric"] == "test_accuracy"
    assert report["epochs"] == 3
    assert report["features"][0]["feature"] == "color"
    assert {row["feature"] for row in report["features"]} == {"size", "color", "city"}
    drops = [row["drop"] for row in report["features"]]
    assert drops == sorted(drops, reverse=True)
    for row in report["features"]:
        assert row["drop"] == pytest.approx(report["all_features"] - row["test_accuracy"])
    assert drops[0] > 0.2
