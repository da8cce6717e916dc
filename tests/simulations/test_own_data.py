"""A user's own table goes through every tool, and models from ``fedge-train`` go through
``fedge-simulate`` as they are.

The end-to-end test writes a table the project has never seen (numeric and categorical
columns, empty fields, a text label), as CSV and as TFRecord, and runs ``fedge-train
--data``, ``fedge-quantize bundle``, ``fedge-simulate --model <export>`` and ``fedge-edge
predict`` on it, each as a separate process, with no model written by hand. The runs are
the session's ``own_table_runs`` (background jobs, started with the session); the test
judges what each tool printed and wrote.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from simulations.inputs.model import load_user_model
from simulations.runner import simulate
from simulations.settings import Settings
from tests.support.user_tables import LABELS, read_tool_runs, write_user_table

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)


def test_a_fedge_train_export_is_a_model_devices_can_train(taxi_bundle_export: Path) -> None:
    """Every layer of an export is trainable as saved; its head is the part devices train,
    as ``fedge-quantize bundle`` splits it (no 'nothing is left for the frozen backbone')."""
    user = load_user_model(taxi_bundle_export)
    names = list(user.head.names)
    assert names
    assert all(name.startswith("head_") for name in names)
    assert not any(name.startswith("head_head_") for name in names)
    frozen = [la.name for la in user.model.layers if la.weights and not la.trainable]
    assert frozen
    assert all(name.startswith("backbone_") for name in frozen)


def test_simulate_trains_a_fedge_train_export_on_a_built_in_task(
    taxi_bundle_export: Path, tmp_path: Path
) -> None:
    settings = Settings(
        task="taxi",
        model_file=taxi_bundle_export,
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


@pytest.mark.parametrize("suffix", [".csv", ".tfrecord"])
def test_a_new_table_goes_through_train_bundle_simulate_and_predict(
    own_table_runs: Callable[[str], Path], suffix: str, tmp_path: Path
) -> None:
    workdir = own_table_runs(suffix)
    runs = read_tool_runs(workdir)
    table = write_user_table(tmp_path / "users.csv")  # the rows the tools read
    export, bundle = workdir / "export", workdir / "bundle"

    trained = runs["trained"].check()
    assert "rows have empty fields (columns income, city)" in trained.stderr
    assert "column 'income' spans" in trained.stderr
    assert "(unscaled)" in trained.stderr
    schema = json.loads((export / "schema.json").read_text())
    assert schema["label_names"] == list(LABELS)
    assert schema["schema"]["categorical"] == ["city", "plan"]
    assert sorted(schema["schema"]["numeric"]) == ["age", "income"]

    runs["bundled"].check()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "schema.json" in manifest["files"]
    assert json.loads((bundle / "schema.json").read_text()) == schema

    simulated = runs["simulated"].check()
    assert "column 'income' is empty in" in simulated.stderr
    metrics = json.loads((workdir / "sim" / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 2
    assert all(r["committed"] for r in metrics["rounds"])

    # the bundle as the model: the devices train it as it is, with the same result
    runs["simulated_bundle"].check()
    again = json.loads((workdir / "sim-bundle" / "metrics.json").read_text())
    assert again["settings"]["source"] == "your bundle"
    assert [r["accuracy"] for r in again["rounds"]] == [r["accuracy"] for r in metrics["rounds"]]

    document = json.loads(runs["predicted"].check().stdout)
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
