"""cloud_trainer: model zoo, data and tf.data pipelines, strategies, export and the CLI."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import psutil
import pytest
import tensorflow as tf

from cloud_trainer.cluster import (
    ClusterRole,
    cluster_role,
    local_tf_configs,
    remove_worker_temp,
    write_filepath,
)
from cloud_trainer.config import TrainConfig
from cloud_trainer.data import prepare_task_data, split_task
from cloud_trainer.errors import ClusterError
from cloud_trainer.evaluation import binary_auc, logit_metrics, slice_metrics
from cloud_trainer.export import load_exported_model, load_feature_spec
from cloud_trainer.launcher import launch_local_cluster
from cloud_trainer.models import (
    build_model,
    embedding_model,
    freeze_backbone,
    head_layer_names,
)
from cloud_trainer.pipelines import (
    FEATURES_KEY,
    LABEL_KEY,
    array_dataset,
    csv_dataset,
    write_tfrecord,
)
from cloud_trainer.record import TrainingRecord, load_training_record
from cloud_trainer.train import TrainResult, predict_logits, train
from fedge.data import DIGITS_SCHEMA, flat_field_names, load_task
from fedge.errors import ConfigError, DataError
from fedge.features import FeatureSpec

# Keras 2.14 seeds its initializers with random.randint(1, 1e9), which Python 3.11 flags.
pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)

CLI_TIMEOUT_S = 240
RECORD_FIELDS = (
    "task",
    "strategy",
    "replicas",
    "workers",
    "epochs",
    "batch_size",
    "seed",
    "test_fraction",
    "data_fraction",
    "data_fingerprint",
    "num_train_examples",
    "host",
    "user",
    "started_at",
    "finished_at",
    "metrics",
    "head_layers",
    "training_job",
    "version",
)


def run_cli(*args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """``python -m cloud_trainer.cli ARGS`` with a bounded wait; killed by PID on timeout."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud_trainer.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        proc.communicate(timeout=30)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
        family = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- model zoo -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "input_shape", "classes", "embedding"),
    [("digits", (8, 8), 10, 64), ("taxi", (40,), 2, 32)],
)
def test_model_layers_split_into_backbone_and_head_by_name(
    task: str, input_shape: tuple[int, ...], classes: int, embedding: int
) -> None:
    model = build_model(task, input_shape=input_shape, num_classes=classes)
    names = [layer.name for layer in model.layers]
    assert all(n.startswith(("backbone_", "head_")) for n in names), names
    assert head_layer_names(model) == ["head_hidden", "head_out"]
    assert model.output_shape == (None, classes)
    assert model.get_layer("head_out").activation is tf.keras.activations.linear  # logits
    assert embedding_model(model).output_shape == (None, embedding)


def test_freeze_backbone_leaves_only_head_trainable() -> None:
    model = freeze_backbone(build_model("digits", input_shape=(8, 8), num_classes=10))
    trainable = {v.name.split("/")[0] for v in model.trainable_variables}
    assert trainable == {"head_hidden", "head_out"}
    assert len(model.trainable_variables) == 4
    assert all(not model.get_layer(n).trainable for n in ("backbone_conv1", "backbone_embedding"))


def test_embedding_model_shares_backbone_weights() -> None:
    model = build_model("taxi", input_shape=(12,), num_classes=2)
    x = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
    embed = embedding_model(model)
    expected = tf.keras.Model(model.input, model.get_layer("backbone_embedding").output)(x)
    np.testing.assert_allclose(embed(x), expected, rtol=1e-6)
    kernel = model.get_layer("backbone_embedding").kernel
    kernel.assign(kernel * 2.0)
    assert not np.allclose(embed(x), expected)  # the same variables, not a copy


def test_build_model_rejects_unknown_task() -> None:
    with pytest.raises(ConfigError, match="no model for task 'mnist'"):
        build_model("mnist", input_shape=(8, 8), num_classes=10)


# --- data ------------------------------------------------------------------------------


def test_feature_spec_built_from_training_split_only() -> None:
    data = prepare_task_data("taxi", seed=1, data_fraction=0.1)
    train, test = split_task(load_task("taxi"), test_fraction=0.2, seed=1, data_fraction=0.1)
    fare = data.spec.numeric[0]
    assert fare.name == "fare"
    assert fare.offset == pytest.approx(np.nanmean(train.columns["fare"]))
    assert fare.offset != pytest.approx(np.nanmean(test.columns["fare"]))
    assert data.fingerprint == train.fingerprint()
    assert len(data.y_train) == len(train)
    assert len(data.y_test) == len(test)


def test_test_split_fixed_by_seed_whatever_the_data_fraction() -> None:
    full = prepare_task_data("digits", seed=3)
    share = prepare_task_data("digits", seed=3, data_fraction=0.25)
    other = prepare_task_data("digits", seed=4)
    np.testing.assert_array_equal(full.y_test, share.y_test)
    np.testing.assert_array_equal(full.x_test, share.x_test)  # minmax 0..16 either way
    assert not np.array_equal(full.y_test, other.y_test)
    assert len(share.y_train) == pytest.approx(0.25 * len(full.y_train), abs=2)
    assert share.fingerprint != full.fingerprint
    assert prepare_task_data("digits", seed=3, data_fraction=0.25).fingerprint == share.fingerprint


def test_digits_pixels_minmax_normalized_to_unit_range() -> None:
    data = prepare_task_data("digits", seed=0, data_fraction=0.2)
    assert data.x_train.shape[1:] == (8, 8)
    assert data.x_train.dtype == np.float32
    assert data.x_train.min() == 0.0
    assert data.x_train.max() == 1.0


# --- pipelines -------------------------------------------------------------------------


def _read_tfrecord(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Every example of a ``write_tfrecord`` file, parsed here by hand: ``(x, y)``."""
    xs, ys = [], []
    for record in tf.data.TFRecordDataset(str(path)):
        features = tf.train.Example.FromString(record.numpy()).features.feature
        xs.append(np.asarray(features[FEATURES_KEY].float_list.value, np.float32).reshape(shape))
        ys.append(features[LABEL_KEY].int64_list.value[0])
    return np.stack(xs), np.asarray(ys, np.int64)


def _rows(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray, list[int]]:
    xs, ys, sizes = [], [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
        sizes.append(len(y))
    return np.concatenate(xs), np.concatenate(ys), sizes


def test_array_dataset_batches_every_example_in_seeded_order() -> None:
    x = np.arange(50, dtype=np.float32).reshape(25, 2)
    y = np.arange(25, dtype=np.int64)
    xs, ys, sizes = _rows(array_dataset(x, y, batch_size=8, shuffle_seed=7))
    assert sizes == [8, 8, 8, 1]
    assert sorted(ys.tolist()) == list(range(25))
    assert not np.array_equal(ys, y)  # shuffled
    np.testing.assert_array_equal(xs, x[ys])  # rows stay with their labels
    again = _rows(array_dataset(x, y, batch_size=8, shuffle_seed=7))[1]
    np.testing.assert_array_equal(again, ys)


def test_csv_dataset_gives_the_spec_transform_of_the_file(tmp_path: Path) -> None:
    data = load_task("digits").take(np.arange(40))
    path = tmp_path / "digits.csv"
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow([*flat_field_names("pixels", (8, 8)), "digit"])
        for pixels, label in zip(data.columns["pixels"], data.labels, strict=True):
            writer.writerow([*(f"{v:g}" for v in pixels.reshape(-1)), int(label)])
    spec = prepare_task_data("digits", seed=0, data_fraction=0.2).spec
    xs, ys, sizes = _rows(csv_dataset(path, schema=DIGITS_SCHEMA, spec=spec, batch_size=16))
    assert sizes == [16, 16, 8]
    np.testing.assert_array_equal(ys, data.labels)
    np.testing.assert_array_equal(xs, spec.transform(data.columns))


@pytest.mark.parametrize("shape", [(8, 8), (5,)])
def test_tfrecord_round_trips_features_and_labels(tmp_path: Path, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(13, *shape)).astype(np.float32)
    y = rng.integers(0, 10, size=13)
    path = tmp_path / "train.tfrecord"
    assert write_tfrecord(path, x, y) == 13
    xs, ys = _read_tfrecord(path, shape)
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys, y)


# --- metrics ---------------------------------------------------------------------------


def test_binary_auc_matches_hand_computed_value() -> None:
    # Pairs (pos, neg): 0.35>0.1 yes, 0.35>0.4 no, 0.8>both yes: 3 of 4.
    assert binary_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert binary_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5  # a tie counts 1/2
    assert np.isnan(binary_auc(np.array([0.2, 0.3]), np.array([1, 1])))


def test_logit_metrics_match_hand_computed_cross_entropy() -> None:
    logits = np.array([[0.0, np.log(3.0)], [2.0, 0.0]])  # p(class 1) = 0.75; row 2 favours 0
    labels = np.array([1, 1])
    metrics = logit_metrics(logits, labels)
    expected = -(np.log(0.75) + np.log(1 / (1 + np.exp(2.0)))) / 2
    assert metrics["loss"] == pytest.approx(expected)
    assert metrics["accuracy"] == 0.5
    assert np.isnan(metrics["auc"])  # one class only


def test_slice_metrics_per_key_leave_out_small_and_missing_slices() -> None:
    keys = np.array(["8"] * 3 + ["32"] * 2 + [None] * 2 + ["5"], dtype=object)
    labels = np.array([1, 0, 1, 1, 1, 0, 0, 1])
    logits = np.zeros((8, 2))
    logits[:, 1] = [2, -1, -1, 1, -1, 0, 0, 1]  # slice 8: right, right, wrong
    slices = slice_metrics(logits, labels, keys, name="area", min_size=2)
    assert set(slices) == {"area=8", "area=32"}  # "5" has one row, None forms no slice
    assert slices["area=8"]["count"] == 3
    assert slices["area=8"]["accuracy"] == pytest.approx(2 / 3)
    assert slices["area=32"]["accuracy"] == 0.5


# --- cluster roles and the local launcher ----------------------------------------------


def test_cluster_role_makes_worker_zero_chief_without_a_chief_task() -> None:
    configs = local_tf_configs([2222, 2223])
    roles = [cluster_role({"TF_CONFIG": c}) for c in configs]
    assert [r.is_chief for r in roles] == [True, False]
    assert all(r.num_workers == 2 for r in roles)
    assert cluster_role({}).is_chief
    with_chief = json.dumps(
        {"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}
    )
    assert not cluster_role({"TF_CONFIG": with_chief}).is_chief


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"cluster": {"worker": ["a:1"]}}',
        '{"cluster": {}, "task": {"type": "worker", "index": 3}}',
    ],
)
def test_cluster_role_rejects_invalid_tf_config(text: str) -> None:
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        cluster_role({"TF_CONFIG": text})


def test_write_filepath_sends_non_chief_to_a_temp_dir_it_removes(tmp_path: Path) -> None:
    target = tmp_path / "saved_model"
    assert write_filepath(target, ClusterRole()) == str(target)
    worker = ClusterRole(task_type="worker", task_id=1, num_workers=2)
    written = write_filepath(target, worker)
    assert written == str(tmp_path / "workertemp_1" / "saved_model")
    Path(written).mkdir()
    remove_worker_temp(written, worker)
    assert list(tmp_path.iterdir()) == []


_FAKE_WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    with open(os.path.join(sys.argv[1], f"seen-{index}"), "w") as f:
        f.write(os.environ["TF_CONFIG"])
    if sys.argv[2] == "fail" and index == 1:
        sys.exit(3)
    time.sleep(float(sys.argv[3]))
    """
)


def _fake_command(tmp_path: Path, mode: str, sleep_s: float) -> list[str]:
    return [sys.executable, "-c", _FAKE_WORKER, str(tmp_path), mode, str(sleep_s)]


def test_launcher_gives_each_worker_its_tf_config(
    tmp_path: Path, no_leftover_children: None
) -> None:
    outcomes = launch_local_cluster(
        _fake_command(tmp_path, "ok", 0), num_workers=3, log_dir=tmp_path, timeout_s=60
    )
    assert [(o.index, o.returncode) for o in outcomes] == [(0, 0), (1, 0), (2, 0)]
    configs = [json.loads((tmp_path / f"seen-{i}").read_text()) for i in range(3)]
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]
    workers = configs[0]["cluster"]["worker"]
    assert len(set(workers)) == 3
    assert all(w.startswith("127.0.0.1:") for w in workers)


def test_launcher_kills_the_others_when_a_worker_fails(
    tmp_path: Path, no_leftover_children: None
) -> None:
    start = time.monotonic()
    with pytest.raises(ClusterError, match=r"worker 1 \(pid \d+\) exited with code 3"):
        launch_local_cluster(
            _fake_command(tmp_path, "fail", 120), num_workers=2, log_dir=tmp_path, timeout_s=60
        )
    assert time.monotonic() - start < 30  # did not wait for the sleeping worker


def test_launcher_kills_every_worker_at_the_deadline(
    tmp_path: Path, no_leftover_children: None
) -> None:
    start = time.monotonic()
    with pytest.raises(ClusterError, match=r"still running after 1s"):
        launch_local_cluster(
            _fake_command(tmp_path, "ok", 120), num_workers=2, log_dir=tmp_path, timeout_s=1
        )
    assert time.monotonic() - start < 30


# --- training and export, in process (default strategy) --------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("digits-default")
    config = TrainConfig(
        task="digits", out_dir=str(out), epochs=4, data_fraction=0.3, seed=5, progress=False
    )
    return train(config)


@pytest.fixture(scope="module")
def taxi_run(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("taxi-default")
    config = TrainConfig(
        task="taxi", out_dir=str(out), epochs=2, data_fraction=0.05, progress=False
    )
    return train(config)


def test_default_strategy_trains_digits_above_chance(digits_run: TrainResult) -> None:
    metrics = digits_run.record.metrics
    assert metrics["test_accuracy"] is not None
    assert metrics["test_accuracy"] > 0.5
    assert digits_run.record.replicas == 1
    assert digits_run.record.epochs_run == 4
    assert digits_run.record.initial_epoch == 0


def test_export_writes_model_spec_record_checkpoints_and_logs(digits_run: TrainResult) -> None:
    out = Path(digits_run.out_dir)
    assert (out / "saved_model" / "saved_model.pb").is_file()
    assert (out / "feature_spec.json").is_file()
    assert (out / "training_record.json").is_file()
    assert sorted(p.name for p in (out / "checkpoints").glob("epoch-*.index")) == [
        f"epoch-00{i}.index" for i in range(1, 5)
    ]
    assert list((out / "logs" / "train").glob("events.out.tfevents.*"))
    assert not (out / "backup").exists()  # removed once training finished
    assert not list(out.rglob("workertemp_*"))


def test_saved_model_predictions_equal_in_memory_model(digits_run: TrainResult) -> None:
    loaded = load_exported_model(digits_run.out_dir)  # no custom objects
    x = digits_run.data.x_test[:64]
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), predict_logits(digits_run.model, x), rtol=1e-5, atol=1e-5
    )
    assert [layer.name for layer in loaded.layers] == [
        layer.name for layer in digits_run.model.layers
    ]


def test_feature_spec_json_reloads_with_the_same_transform(taxi_run: TrainResult) -> None:
    text = (Path(taxi_run.out_dir) / "feature_spec.json").read_text()
    spec = FeatureSpec.from_json(text)
    assert spec == taxi_run.spec
    assert spec == load_feature_spec(taxi_run.out_dir)
    raw = load_task("taxi").take(np.arange(200))
    np.testing.assert_array_equal(spec.transform(raw.columns), taxi_run.spec.transform(raw.columns))


@pytest.mark.parametrize("run", ["digits_run", "taxi_run"])
def test_training_record_fields_filled(run: str, request: pytest.FixtureRequest) -> None:
    result: TrainResult = request.getfixturevalue(run)
    doc = json.loads((Path(result.out_dir) / "training_record.json").read_text())
    assert all(doc.get(name) not in (None, "", []) for name in RECORD_FIELDS), doc
    assert doc["format"] == "fedge.training_record"
    assert doc["data_fingerprint"] == result.data.fingerprint
    assert doc["num_train_examples"] == len(result.data.y_train)
    assert doc["started_at"].endswith("+00:00")
    assert doc["started_at"] <= doc["finished_at"]
    assert doc["head_layers"] == ["head_hidden", "head_out"]
    expected = {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}
    if doc["task"] == "taxi":
        expected.add("test_auc")
        assert 0.5 < doc["metrics"]["test_auc"] <= 1.0
        slices = doc["slice_metrics"]
        assert slices
        assert all(k.startswith("pickup_community_area=") for k in slices)
        assert all(v["count"] >= 20 for v in slices.values())
        assert sum(v["count"] for v in slices.values()) <= doc["num_test_examples"]
    else:
        assert doc["slice_metrics"] == {}  # digits has no region column
    assert set(doc["metrics"]) == expected
    assert load_training_record(result.out_dir) == result.record


def test_training_record_rejects_other_documents(tmp_path: Path) -> None:
    (tmp_path / "training_record.json").write_text('{"format": "something else"}')
    with pytest.raises(DataError, match="not a training record"):
        load_training_record(tmp_path)
    with pytest.raises(DataError, match="missing fields"):
        TrainingRecord.from_dict({"format": "fedge.training_record", "version": 1})


# --- strategies through the CLI (fresh processes: logical devices, clusters) -----------


@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("digits-mirrored")
    tfrecord = out.parent / f"{out.name}-train.tfrecord"
    result = run_cli(
        "--task=digits",
        "--strategy=mirrored",
        "--epochs=4",
        "--batch-size=16",
        "--data-fraction=0.3",
        f"--out={out}",
        f"--to-tfrecord={tfrecord}",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), tfrecord


def test_mirrored_strategy_trains_with_two_cpu_replicas(
    mirrored_run: tuple[dict[str, Any], Path],
) -> None:
    record = mirrored_run[0]["record"]
    assert record["strategy"] == "mirrored"
    assert record["replicas"] == 2
    assert record["global_batch_size"] == 32  # 16 per replica
    assert record["metrics"]["test_accuracy"] > 0.3  # chance: 0.1


def test_cli_writes_training_examples_as_tfrecord(
    mirrored_run: tuple[dict[str, Any], Path],
) -> None:
    outcome, tfrecord = mirrored_run
    x, y = _read_tfrecord(tfrecord, (8, 8))
    assert len(y) == outcome["record"]["num_train_examples"]
    assert x.shape[1:] == (8, 8)
    assert x.min() >= 0.0
    assert x.max() <= 1.0


@pytest.mark.slow
def test_multi_worker_trains_with_two_real_processes(
    tmp_path: Path, no_leftover_children: None
) -> None:
    out = tmp_path / "mw"
    result = run_cli(
        "--task=digits",
        "--strategy=multi-worker",
        "--workers=2",
        "--epochs=2",
        "--data-fraction=0.2",
        f"--out={out}",
        "--worker-timeout=200",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    workers = outcome["workers"]
    assert [(w["index"], w["returncode"]) for w in workers] == [(0, 0), (1, 0)]
    assert all(_gone(w["pid"]) for w in workers)
    record = outcome["record"]
    assert (record["workers"], record["replicas"], record["strategy"]) == (2, 2, "multi-worker")
    assert load_training_record(out).to_dict() == record
    assert (out / "saved_model" / "saved_model.pb").is_file()
    assert sorted(p.name for p in (out / "checkpoints").glob("*.index")) == [
        "epoch-001.index",
        "epoch-002.index",
    ]
    # Only the chief wrote: every TensorBoard event file (events.out.tfevents.<time>.<host>
    # .<pid>.<n>.v2) carries worker 0's pid, and the non-chief's workertemp_1 dirs
    # (checkpoints, logs, backup, model) are gone.
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events
    assert {e.name.split(".")[-3] for e in events} == {str(workers[0]["pid"])}
    assert not list(out.rglob("workertemp_*"))
    assert not (out / "backup").exists()


@pytest.mark.slow
def test_multi_worker_failure_kills_the_peer_and_exits_1(
    tmp_path: Path, no_leftover_children: None
) -> None:
    # The chief fails (unwritable --to-tfrecord); worker 1 would wait for it forever.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli(
        "--task=digits",
        "--strategy=multi-worker",
        "--workers=2",
        "--epochs=1",
        "--data-fraction=0.2",
        f"--out={tmp_path / 'out'}",
        f"--to-tfrecord={blocker / 'train.tfrecord'}",
        "--worker-timeout=200",
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fedge-train: error: worker 0 (pid "), result.stderr
    assert "exited with code 2; the other workers were killed" in result.stderr
    assert not (tmp_path / "out" / "training_record.json").exists()


def _start_launcher(out: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """A local 2-worker CLI run, once both workers exist: (launcher, worker pids)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    args = ["--task=digits", "--strategy=multi-worker", "--workers=2", "--epochs=1000"]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "cloud_trainer.cli", *args, f"--out={out}", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        parent = psutil.Process(launcher.pid)
        deadline = time.monotonic() + 60
        while len(parent.children()) < 2:
            assert launcher.poll() is None, launcher.communicate()
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        return launcher, [child.pid for child in parent.children()]
    except BaseException:
        _kill_tree(launcher.pid)
        raise


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """The pids still alive after up to ``timeout_s``; they are then killed."""
    deadline = time.monotonic() + timeout_s
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in pids if not _gone(pid)]
    for pid in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    return alive


@pytest.mark.slow
def test_interrupted_launcher_kills_its_workers_and_exits_130(
    tmp_path: Path, no_leftover_children: None
) -> None:
    # SIGINT lands while the launcher is still starting worker 1 (or just after): a
    # Ctrl-C inside Popen used to orphan that worker.
    launcher, workers = _start_launcher(tmp_path / "out")
    try:
        launcher.send_signal(signal.SIGINT)
        _, err = launcher.communicate(timeout=60)
    finally:
        _kill_tree(launcher.pid)
    assert _wait_gone(workers, timeout_s=1) == []  # already gone when the launcher returned
    assert launcher.returncode == 130, err
    assert err.strip().splitlines()[-1] == "fedge-train: error: interrupted"


@pytest.mark.slow
def test_workers_exit_when_their_launcher_is_killed(
    tmp_path: Path, no_leftover_children: None
) -> None:
    launcher, workers = _start_launcher(tmp_path / "out")
    try:
        launcher.kill()  # SIGKILL: the launcher cannot clean up, the workers must notice
        launcher.wait(timeout=30)  # not communicate(): the chief shares its stderr pipe
    finally:
        alive = _wait_gone(workers, timeout_s=30)
        for stream in (launcher.stdout, launcher.stderr):
            if stream is not None:
                stream.close()
    assert alive == []


# --- CLI errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task=mnist", "--epochs=1"], "unknown task 'mnist'"),
        (["--task=digits", "--strategy=tpu", "--epochs=1"], "unknown strategy 'tpu'"),
        (["--task=digits", "--epochs=0"], "epochs must be an integer >= 1"),
        (["--task=digits", "--epochs=two"], "invalid int value: 'two'"),
        (["--task=digits", "--epochs=1", "--data-fraction=1.5"], "data_fraction must be"),
        (["--task=digits", "--epochs=1", "--batch-size=-3"], "batch_size must be"),
        (["--task=digits", "--epochs=1", "--workers=2"], "workers applies to"),
        (["--task=digits"], "the following arguments are required: --epochs"),
        (["--task=digits", "--epochs=1", "--data", "0.5"], "--data: not allowed with argument"),
        (["--task=digits", "--epochs=1", "--lr=0.1"], "unrecognized arguments: --lr=0.1"),
        (["--task=digits", "--epochs=1", "--worker-timeout=0"], "--worker-timeout must be > 0"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli(*args, f"--out={tmp_path / 'out'}", timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fedge-train: error: ")
    assert message in lines[0]
    assert "usage:" not in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_unwritable_out_exits_2_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_cli("--task=digits", "--epochs=1", f"--out={blocker / 'out'}", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fedge-train: error: cannot write to {blocker / 'out'}: Not a directory"
    ]


def test_public_api_names_resolve() -> None:
    import cloud_trainer

    assert [n for n in cloud_trainer.__all__ if not hasattr(cloud_trainer, n)] == []
    with pytest.raises(AttributeError):
        _ = cloud_trainer.no_such_name


def test_cli_and_launcher_import_without_tensorflow() -> None:
    code = "import sys, cloud_trainer, cloud_trainer.cli; print('tensorflow' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


def test_cli_help_documents_exit_codes() -> None:
    result = run_cli("--help", timeout=60)
    assert result.returncode == 0
    for line in (
        "0    training finished",
        "1    training failed",
        "2    usage or input error",
        "130  interrupted",
    ):
        assert line in result.stdout
    assert "SIGTERM stops\nthe same way but keeps OUT" in result.stdout
