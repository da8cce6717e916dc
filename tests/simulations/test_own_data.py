"""A user's own table goes through every tool, and models from ``fedge-train`` go through
``fedge-simulate`` as they are.

The end-to-end test writes a table the project has never seen (numeric and categorical
columns, empty fields, a text label), as CSV and as TFRecord, and runs ``fedge-train
--data``, ``fedge-quantize bundle``, ``fedge-simulate --model <export>`` and ``fedge-edge
predict`` on it, each as a separate process, with no model written by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simulations.inputs.model import load_user_model
from simulations.runner import simulate
from simulations.settings import Settings
from tests.support import REPO_ROOT
from tests.support.trained_models import train_export
from tests.support.user_tables import LABELS, write_user_table, write_user_tfrecord

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)


@pytest.fixture(scope="module")
def taxi_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_export("taxi", tmp_path_factory.mktemp("taxi") / "export", epochs=1)


def test_a_fedge_train_export_is_a_model_devices_can_train(taxi_export: Path) -> None:
    """Every layer of an export is trainable as saved; its head is the part devices train,
    as ``fedge-quantize bundle`` splits it (no 'nothing is left for the frozen backbone')."""
    user = load_user_model(taxi_export)
    names = list(user.head.names)
    assert names
    assert all(name.startswith("head_") for name in names)
    assert not any(name.startswith("head_head_") for name in names)
    frozen = [la.name for la in user.model.layers if la.weights and not la.trainable]
    assert frozen
    assert all(name.startswith("backbone_") for name in frozen)


def test_simulate_trains_a_fedge_train_export_on_a_built_in_task(
    taxi_export: Path, tmp_path: Path
) -> None:
    settings = Settings(
        task="taxi",
        model_file=taxi_export,
        rounds=1,
        clients=3,
        workers=1,
        baseline=False,
        personalization=False,
        cache_dir=tmp_path / "cache",
    )
    report = simulate(settings)
    assert [r.committed for r in report.result.rounds] == [True]
    assert report.initial_label == "initial (your model)"
    assert all(name.startswith("head_") for name in report.result.final_head.names)


def _cli(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, f"{module} {args}: {result.stderr[-3000:]}"
    return result


@pytest.mark.parametrize("suffix", [".csv", ".tfrecord"])
def test_a_new_table_goes_through_train_bundle_simulate_and_predict(
    tmp_path: Path, suffix: str
) -> None:
    table = write_user_table(tmp_path / "users.csv")
    data = tmp_path / f"users{suffix}"
    if suffix == ".tfrecord":
        write_user_tfrecord(data, table)
    export, bundle = tmp_path / "export", tmp_path / "bundle"

    trained = _cli(
        "cloud_trainer.cli", "--data", str(data), "--label-column", "churned",
        "--epochs", "2", "--out", str(export),
    )  # fmt: skip
    assert "rows have empty fields (columns income, city)" in trained.stderr
    assert "column 'income' spans" in trained.stderr
    assert "(unscaled)" in trained.stderr
    schema = json.loads((export / "schema.json").read_text())
    assert schema["label_names"] == list(LABELS)
    assert schema["schema"]["categorical"] == ["city", "plan"]
    assert sorted(schema["schema"]["numeric"]) == ["age", "income"]

    _cli("quantize.cli", "bundle", str(export), "--out", str(bundle))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "schema.json" in manifest["files"]
    assert json.loads((bundle / "schema.json").read_text()) == schema

    simulated = _cli(
        "simulations.cli", "--model", str(export), "--data", str(data),
        "--rounds", "2", "--clients", "3", "--epochs", "1",
        "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "sim"),
    )  # fmt: skip
    assert "column 'income' is empty in" in simulated.stderr
    metrics = json.loads((tmp_path / "sim" / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 2
    assert all(r["committed"] for r in metrics["rounds"])

    # the bundle as the model: the devices train it as it is, with the same result
    _cli(
        "simulations.cli", "--model", str(bundle), "--data", str(data),
        "--rounds", "2", "--clients", "3", "--epochs", "1",
        "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "sim-bundle"),
    )  # fmt: skip
    again = json.loads((tmp_path / "sim-bundle" / "metrics.json").read_text())
    assert again["settings"]["source"] == "your bundle"
    assert [r["accuracy"] for r in again["rounds"]] == [r["accuracy"] for r in metrics["rounds"]]

    predicted = _cli(
        "edge_client.cli", "predict", "--bundle", str(bundle), "--input", str(data), "--json"
    )
    document = json.loads(predicted.stdout)
    assert document["count"] == len(table)
    labels = [p["label"] for p in document["predictions"]]
    assert set(labels) <= set(LABELS)
    truth = [row["churned"] for row in table]
    accuracy = float(np.mean([a == b for a, b in zip(labels, truth, strict=True)]))
    majority = max(truth.count(label) for label in LABELS) / len(truth)  # 0.58 here
    assert accuracy > majority + 0.15, (accuracy, majority)  # the model learned the rule


def test_the_tff_engine_refuses_a_bundle_as_the_model(tmp_path: Path) -> None:
    from simulations.errors import SettingsError
    from simulations.settings import check_settings

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    settings = Settings(task="taxi", model_file=bundle, engine="tff", cache_dir=tmp_path)
    with pytest.raises(SettingsError, match="needs a Keras model") as caught:
        check_settings(settings)
    assert caught.value.fields == ("engine", "model_file")
