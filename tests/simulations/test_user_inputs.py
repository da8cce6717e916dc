"""A user's workload expressed exactly, with plain inputs: the partition's row order, a test
data file, plain safetensors initial weights, a fully trainable model and every round's
weights saved.

The model is a small fully trainable MLP (16 inputs -> Dense(8, relu) -> Dense(3, softmax))
saved as ``.keras``, with its initial weights written the plain way
(``safetensors.numpy.save_file({w.name[:-2]: w.numpy() ...})``); its bundle is built once
per module (the conversion cache is shared by every run here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from fedge.errors import ConfigError
from fedge.weights import Weights
from simulations.errors import SettingsError
from simulations.inputs import files as inputs
from simulations.report import RunReport
from simulations.settings import Settings, check_settings

if TYPE_CHECKING:
    import tensorflow as tf

    from tests.support.simulation import CliRunner

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)

ROWS, FEATURES, CLASSES = 120, 16, 3


def _arrays(seed: int, rows: int = ROWS) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, rows)
    centers = np.random.default_rng(99).normal(0.0, 1.0, (CLASSES, FEATURES))
    x = (centers[y] + rng.normal(0.0, 0.7, (rows, FEATURES))).astype(np.float32)
    return x, y


def _write_csv(path: Path, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> Path:
    header = ",".join([*(f"f{i}" for i in range(x.shape[1])), "label"])
    lines = [header] + [
        ",".join([*(f"{v:.5f}" for v in row), str(int(label))])
        for row, label in zip(x, y, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# The partition keeps the order given ---------------------------------------------------------


def test_hand_written_partition_keeps_each_clients_row_order() -> None:
    document = {"b": [9, 3, 7, 1, 0], "a": [5, 2, 8, 4, 6]}
    in_order = inputs._ordered_partition(document, holdout_fraction=0.0, seed=0)
    assert list(in_order) == ["b", "a"]
    assert in_order["b"].train.tolist() == [9, 3, 7, 1, 0]
    assert in_order["a"].train.tolist() == [5, 2, 8, 4, 6]
    held = inputs._ordered_partition(document, holdout_fraction=0.4, seed=3)
    for client, rows in document.items():
        split = held[client]
        assert split.holdout.size == 2
        # the train rows are the list minus the held-out ones, in the listed order
        assert split.train.tolist() == [r for r in rows if r not in split.holdout.tolist()]
        assert split.holdout.tolist() == [r for r in rows if r in split.holdout.tolist()]


def test_partition_file_forms_keep_the_order_given(tmp_path: Path) -> None:
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"c0": [11, 2, 7], "c1": [0, 19, 4, 3]}))
    got = inputs.load_partition(plain, rows=20, holdout_fraction=0.0, seed=0)
    assert got["c0"].train.tolist() == [11, 2, 7]
    assert got["c1"].train.tolist() == [0, 19, 4, 3]
    full = tmp_path / "full.json"
    full.write_text(
        json.dumps(
            {
                "format": "fedge.partition/1",
                "clients": {"c0": {"train": [11, 2, 7], "holdout": [5, 1]}},
                "unassigned": [3],
            }
        )
    )
    got = inputs.load_partition(full, rows=20, holdout_fraction=0.2, seed=0)
    assert got["c0"].train.tolist() == [11, 2, 7]
    assert got["c0"].holdout.tolist() == [5, 1]


# --test-data ----------------------------------------------------------------------------------


def test_test_data_is_read_like_the_data_file(tmp_path: Path) -> None:
    x, y = _arrays(0)
    tx, ty = _arrays(1, rows=30)
    data = inputs.load_data(_write_csv(tmp_path / "train.csv", x, y))
    test = inputs.load_test_data(_write_csv(tmp_path / "test.csv", tx, ty), data)
    assert len(test) == 30
    np.testing.assert_array_equal(test.labels, ty)
    assert sorted(test.columns) == sorted(data.columns)
    np.testing.assert_allclose(test.columns["f3"], tx[:, 3], atol=1e-5)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=tx, y=ty)
    npz = inputs.load_test_data(tmp_path / "test.npz", inputs.load_data(tmp_path / "train.npz"))
    np.testing.assert_array_equal(npz.columns["x"], tx)


def test_test_data_that_does_not_match_the_data_is_refused(tmp_path: Path) -> None:
    x, y = _arrays(0)
    data = inputs.load_data(_write_csv(tmp_path / "train.csv", x, y))
    short = _write_csv(tmp_path / "short.csv", x[:5, :4], y[:5])
    with pytest.raises(ConfigError, match=r"test data file .*short\.csv: .*f4") as caught:
        inputs.load_test_data(short, data)
    assert "\n" not in str(caught.value)
    other = _write_csv(tmp_path / "other.csv", x[:5], np.full(5, 7))
    with pytest.raises(ConfigError, match=r"test data file .*other\.csv: .*7"):
        inputs.load_test_data(other, data)
    np.savez(tmp_path / "t.npz", x=x[:5], y=y[:5])
    with pytest.raises(ConfigError, match=r"expected a table .* like the data file"):
        inputs.load_test_data(tmp_path / "t.npz", data)
    with pytest.raises(SettingsError, match="a test data file needs the data file") as settings:
        check_settings(Settings(task="digits", test_data_file=tmp_path / "t.npz"))
    assert settings.value.fields == ("test_data_file", "data_file")


def test_save_weights_takes_final_or_every_round() -> None:
    with pytest.raises(SettingsError, match=r"save_weights must be one of") as caught:
        check_settings(Settings(task="digits", save_weights="sometimes"))
    assert caught.value.fields == ("save_weights",)
    with pytest.raises(SettingsError, match=r"tff reference engine does not report"):
        check_settings(Settings(task="digits", engine="tff", save_weights="every-round"))


# A fully trainable model, plain init, --test-data and every round's weights ----------------

USER_NAMES = ["hidden/kernel", "hidden/bias", "out/kernel", "out/bias"]
BATCH = 8


def _mlp() -> tf.keras.Model:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    inputs_ = tf.keras.Input((FEATURES,))
    hidden = tf.keras.layers.Dense(8, activation="relu", name="hidden")(inputs_)
    return tf.keras.Model(inputs_, tf.keras.layers.Dense(CLASSES, "softmax", name="out")(hidden))


@dataclass(frozen=True)
class Workload:
    root: Path
    cache: Path
    init: dict[str, np.ndarray[Any, Any]]
    report: RunReport
    weights: Path


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    """The user's plain files and one 2-round run over them (its weights every round)."""
    import safetensors.numpy

    from simulations.runner import simulate

    root = tmp_path_factory.mktemp("user-inputs")
    x, y = _arrays(0)
    np.savez(root / "data.npz", x=x, y=y)
    tx, ty = _arrays(1, rows=40)
    np.savez(root / "test.npz", x=tx, y=ty)
    model = _mlp()
    model.save(root / "model.keras")
    rng = np.random.default_rng(5)
    init = {w.name[:-2]: w.numpy() + 0.1 * rng.standard_normal(w.shape) for w in model.weights}
    init = {k: v.astype(np.float32) for k, v in init.items()}
    safetensors.numpy.save_file(init, str(root / "init.safetensors"))
    (root / "partition.json").write_text(
        json.dumps({"b": list(range(119, 59, -1)), "a": list(range(60))})
    )
    report = simulate(_settings(root, root / "cache", rounds=2), weights_dir=root / "weights")
    return Workload(root, root / "cache", init, report, root / "weights")


def _settings(root: Path, cache: Path, **changes: Any) -> Settings:
    base: dict[str, Any] = {
        "task": None,
        "model_file": root / "model.keras",
        "init_file": root / "init.safetensors",
        "data_file": root / "data.npz",
        "test_data_file": root / "test.npz",
        "partition_file": root / "partition.json",
        "holdout_fraction": 0.0,
        "epochs": 1,
        "batch_size": BATCH,
        "learning_rate": 0.1,
        "workers": 1,
        "baseline": False,
        "personalization": False,
        "cache_dir": cache,
    }
    return Settings(**{**base, **changes})


def _bundle(report: RunReport) -> Path:
    return Path(report.settings["bundle"])


def test_a_fully_trainable_model_trains_every_layer_from_a_plain_init(
    workload: Workload,
) -> None:
    from edge_client import EdgeModel
    from fedge.bundle import read_manifest
    from simulations.scenario import initial_head

    bundle = _bundle(workload.report)
    manifest = read_manifest(bundle)
    # the whole model is the head; the backbone is the identity (the embedding is the input)
    assert list(manifest.head) == [f"head_{name}" for name in USER_NAMES]
    assert {"backbone.tflite", "head.tflite", "trainable.tflite"} <= set(manifest.files)
    start = initial_head(bundle)
    for name in USER_NAMES:  # the plain init file, applied to every layer
        np.testing.assert_array_equal(start[f"head_{name}"], workload.init[name])
    # the int8 backbone is the identity up to its quantization step, head.tflite the model
    edge = EdgeModel.load(bundle)
    x, _ = _arrays(0, rows=16)
    step = float(np.ptp(x)) / 255
    np.testing.assert_allclose(edge.embed(x), x, atol=step)
    np.testing.assert_allclose(edge.head_logits(x), edge.logits(x), atol=1e-5)
    rounds = workload.report.result.rounds
    assert [r.committed for r in rounds] == [True, True]
    final = workload.report.result.final_head
    assert all(not np.array_equal(final[n], start[n]) for n in start.names)


def test_the_test_data_file_is_every_rounds_evaluation_set(workload: Workload) -> None:
    from edge_client import EdgeModel
    from simulations.baseline import evaluate_head

    settings = workload.report.settings
    assert settings["test"] == f"the test data file {workload.root / 'test.npz'}"
    assert settings["test_examples"] == 40
    assert settings["pool_examples"] == ROWS  # every row of the data file is a client's
    model = EdgeModel.load(_bundle(workload.report))
    with np.load(workload.root / "test.npz") as test:
        x, y = test["x"].astype(np.float32), test["y"]
    final = evaluate_head(model, x, y, head=workload.report.result.final_head)
    assert workload.report.result.rounds[-1].accuracy == final.accuracy


def test_every_rounds_weights_are_saved_plain_and_load_back_as_init(
    workload: Workload,
) -> None:
    import safetensors.numpy

    from simulations.inputs.model import load_user_model

    saved = sorted(p.name for p in workload.weights.iterdir())
    assert saved == ["round-0001.safetensors", "round-0002.safetensors"]
    last = safetensors.numpy.load_file(str(workload.weights / "round-0002.safetensors"))
    assert sorted(last) == sorted(USER_NAMES)  # named as the user's model
    final = workload.report.result.final_head
    for name in USER_NAMES:
        np.testing.assert_array_equal(last[name], final[f"head_{name}"])
    first = safetensors.numpy.load_file(str(workload.weights / "round-0001.safetensors"))
    assert not np.array_equal(first["out/kernel"], last["out/kernel"])
    init = inputs.load_init(workload.weights / "round-0002.safetensors")
    user = load_user_model(workload.root / "model.keras", init=init)
    for name in USER_NAMES:
        np.testing.assert_array_equal(user.head[f"head_{name}"], last[name])


def test_each_client_trains_on_its_rows_in_the_order_given(
    workload: Workload, tmp_path: Path
) -> None:
    from edge_client import EdgeModel
    from simulations.runner import simulate
    from simulations.scenario import initial_head

    rows = [int(i) for i in np.random.default_rng(2).permutation(ROWS)[:37]]  # a short batch
    partition = tmp_path / "one.json"
    partition.write_text(json.dumps({"only": rows}))
    settings = _settings(workload.root, workload.cache, partition_file=partition, rounds=1)
    simulate(settings, weights_dir=tmp_path / "weights")
    trained = Weights(_load_plain(tmp_path / "weights" / "round-0001.safetensors", prefix="head_"))
    # the device's own train step on the rows in the listed order (batches = consecutive
    # slices of the list), and in sorted order
    model = EdgeModel.load(_bundle(workload.report))
    start = initial_head(_bundle(workload.report))
    with np.load(workload.root / "data.npz") as data:
        x, y = data["x"].astype(np.float32), data["y"]

    def train(order: list[int]) -> Weights:
        head, _ = model.train(x[order], y[order], start=start, epochs=1, learning_rate=0.1)
        return head

    in_order, in_sorted = train(rows), train(sorted(rows))
    gap = max(float(np.abs(trained[n] - in_order[n]).max()) for n in trained.names)
    other = max(float(np.abs(trained[n] - in_sorted[n]).max()) for n in trained.names)
    # equal up to the float32 rounding of base + (trained - base) in the aggregation
    assert gap <= 1e-6
    assert other > 1e-3


def _load_plain(path: Path, *, prefix: str) -> dict[str, np.ndarray[Any, Any]]:
    import safetensors.numpy

    return {prefix + k: v for k, v in safetensors.numpy.load_file(str(path)).items()}


def test_the_cli_writes_every_rounds_weights(
    workload: Workload, fedge_simulate: CliRunner, tmp_path: Path
) -> None:
    r = workload.root
    out = tmp_path / "out"
    result = fedge_simulate(
        [
            "--model", str(r / "model.keras"), "--init", str(r / "init.safetensors"),
            "--data", str(r / "data.npz"), "--test-data", str(r / "test.npz"),
            "--partition-file", str(r / "partition.json"), "--holdout-fraction", "0",
            "--rounds", "2", "--epochs", "1", "--batch-size", str(BATCH),
            "--learning-rate", "0.1", "--workers", "1", "--no-baseline",
            "--no-personalization", "--cache-dir", str(workload.cache), "--out", str(out),
            "--save-weights", "every-round", "--json",
        ]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "weights").iterdir()) == [
        "round-0001.safetensors",
        "round-0002.safetensors",
    ]
    # the same inputs, the same cached bundle: the in-process run's figures and weights
    document = json.loads(result.stdout)
    accuracies = [r["accuracy"] for r in document["rounds"]]
    assert accuracies == [r.accuracy for r in workload.report.result.rounds]
    assert (out / "weights" / "round-0002.safetensors").read_bytes() == (
        workload.weights / "round-0002.safetensors"
    ).read_bytes()


# Refusals that name what to change -----------------------------------------------------------


def test_a_trainable_layer_without_builtin_gradients_is_refused(tmp_path: Path) -> None:
    import tensorflow as tf

    from simulations.inputs.model import load_user_model

    inputs_ = tf.keras.Input((8, 8, 1))
    h = tf.keras.layers.Conv2D(4, 3, name="conv")(inputs_)
    h = tf.keras.layers.Flatten()(h)
    model = tf.keras.Model(inputs_, tf.keras.layers.Dense(CLASSES, name="out")(h))
    model.save(tmp_path / "conv.keras")
    with pytest.raises(ConfigError, match=r"layer 'conv' \(Conv2D\) is trainable") as caught:
        load_user_model(tmp_path / "conv.keras")
    message = str(caught.value)
    assert "freeze it: layer.trainable = False" in message
    assert "\n" not in message


def test_a_plain_init_that_does_not_fit_names_every_difference(
    workload: Workload,
) -> None:
    from simulations.inputs.model import load_user_model

    good = {k: np.asarray(v) for k, v in workload.init.items()}
    bad = dict(good)
    del bad["out/bias"]
    bad["extra/kernel"] = np.zeros((2, 2), np.float32)
    bad["hidden/kernel"] = np.zeros((3, 8), np.float32)
    with pytest.raises(SettingsError) as caught:
        load_user_model(workload.root / "model.keras", init=Weights(bad))
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.fields == ("init_file",)
    assert "missing out/bias" in message
    assert "extra extra/kernel" in message
    assert "mis-shaped hidden/kernel (3, 8) (the model's (16, 8))" in message
    # only the trainable weights, as the plain names: accepted as well
    trainable = {k: good[k] for k in USER_NAMES}
    user = load_user_model(workload.root / "model.keras", init=Weights(trainable))
    np.testing.assert_array_equal(user.head["head_out/bias"], good["out/bias"])
