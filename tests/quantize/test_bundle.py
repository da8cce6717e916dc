"""``fedge-quantize bundle``: the edge bundle, checked on a device with no TensorFlow.

The device side runs in a subprocess, ``python -m tests.quantize.test_bundle --probe WORKDIR``: a
meta-path blocker makes ``tensorflow``, ``keras``, ``quantize`` and ``cloud_trainer``
unimportable, then the probe verifies the manifest's sha256s, rebuilds the held-out data from
the manifest alone (raw task data + the manifest's feature spec + the split in its training
record), and runs the three models with the TFLite runtime. The test compares what it
measured with the Keras model. This module imports neither TensorFlow nor the cloud packages
at import time, so the same file can serve as that probe.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)
REPO = Path(__file__).resolve().parents[2]
HEAD = ["head_hidden/kernel", "head_hidden/bias", "head_out/kernel", "head_out/bias"]
BUNDLE_FILES = [
    "backbone.tflite",
    "inference.tflite",
    "manifest.json",
    "trainable.tflite",
    "weights.safetensors",
]
TAXI_ARGS = ["--batch-size", "16", "--model-version", "taxi-v1.0", "--representative", "100"]
PROBE_STEPS = 20
PROBE_LEARNING_RATE = 0.05


def _bundle(export: Path, out: Path, *args: str) -> dict[str, Any]:
    from quantize.cli import quantize_cli

    code = quantize_cli(["bundle", str(export), "--out", str(out), "--json", "--quiet", *args])
    assert code == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def digits_bundle(digits_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "digits"
    _bundle(digits_export, out)
    return out


@pytest.fixture(scope="module")
def taxi_bundle(taxi_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "taxi"
    _bundle(taxi_export, out, *TAXI_ARGS)
    return out


def _keras_reference(export: Path) -> dict[str, np.ndarray]:
    """The Keras model's logits and embeddings on the cloud-side held-out arrays."""
    from cloud_trainer.models import embedding_model
    from quantize.inputs import load_task_arrays, resolve_model
    from tests.support.trained_models import load_model

    arrays = load_task_arrays(resolve_model(export))
    model = load_model(export)
    return {
        "x_test": arrays.x_test,
        "y_test": arrays.y_test,
        "keras_logits": model.predict(arrays.x_test, verbose=0),
        "keras_embedding": embedding_model(model).predict(arrays.x_test[:200], verbose=0),
    }


def _run_probe(bundle: Path, export: Path, workdir: Path) -> dict[str, Any]:
    np.savez(workdir / "reference.npz", **_keras_reference(export))
    run = subprocess.run(
        [sys.executable, "-m", "tests.quantize.test_bundle", "--probe", str(workdir), str(bundle)],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result: dict[str, Any] = json.loads((workdir / "results.json").read_text())
    return result


# Acceptance 3: the bundle on a device without TensorFlow --------------------------------


@pytest.mark.parametrize("task", ["digits", "taxi"])
def test_bundle_runs_where_tensorflow_cannot_be_imported(
    task: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    bundle = request.getfixturevalue(f"{task}_bundle")
    export = request.getfixturevalue(f"{task}_export")

    result = _run_probe(bundle, export, tmp_path)

    assert result["tensorflow_import_fails"] is True
    assert result["blocked_modules_loaded"] == []
    assert result["runtime"] == "tflite_runtime.interpreter"
    assert result["verified_files"] == sorted(set(BUNDLE_FILES) - {"manifest.json"})
    # The device transforms raw data with the manifest's spec exactly as the cloud did.
    assert result["transform_max_abs_diff"] == 0.0
    assert result["inference_input_dtype"] == "int8"
    assert result["inference_agreement"] >= 0.97
    assert result["trainable_max_logit_gap"] < 1e-4
    assert result["initial_weights_equal_safetensors"] is True
    assert len(result["step_losses"]) == PROBE_STEPS
    assert result["loss_after"] < result["loss_before"]
    assert result["roundtrip_bit_exact"] is True
    assert result["restored_predictions_equal"] is True
    assert result["trained_predictions_restored"] is True
    assert result["training_changed_predictions_by"] > 1e-4
    assert result["embedding_shape"] == [200, 64 if task == "digits" else 32]
    assert result["embedding_mean_cosine"] > 0.99


# The bundle's contents -------------------------------------------------------------------


def test_digits_bundle_has_every_file_and_lineage_in_the_manifest(
    digits_bundle: Path, digits_export: Path
) -> None:
    from fedge.bundle import verify_bundle
    from fedge.data import load_task

    record = json.loads((digits_export / "training_record.json").read_text())
    spec = json.loads((digits_export / "feature_spec.json").read_text())
    manifest = verify_bundle(digits_bundle)

    assert sorted(p.name for p in digits_bundle.iterdir()) == BUNDLE_FILES
    assert sorted(manifest.files) == sorted(set(BUNDLE_FILES) - {"manifest.json"})
    assert manifest.task == "digits"
    assert manifest.schema == load_task("digits").schema
    assert dict(manifest.feature_spec) == spec
    assert manifest.train_batch_size == 32
    assert manifest.head == tuple(HEAD)
    assert manifest.num_classes == 10
    assert manifest.metadata["training_record"] == record
    finished = datetime.fromisoformat(record["finished_at"]).astimezone(UTC)
    assert manifest.model_version == (
        f"digits-{record['data_fingerprint'][:12]}-{finished:%Y%m%dT%H%M%SZ}"
    )
    quantization = manifest.metadata["quantization"]["inference_int8"]
    assert quantization["argmax_agreement"] >= 0.97
    assert quantization["keras"]["accuracy"] == pytest.approx(record["metrics"]["test_accuracy"])
    assert manifest.metadata["representative"] == {"examples": 200, "source": "training split"}


def test_taxi_bundle_takes_version_batch_size_and_sample_size_from_the_options(
    taxi_bundle: Path,
) -> None:
    from fedge.bundle import verify_bundle

    manifest = verify_bundle(taxi_bundle)
    assert manifest.model_version == "taxi-v1.0"
    assert manifest.train_batch_size == 16
    assert manifest.num_classes == 2
    assert manifest.metadata["representative"]["examples"] == 100
    assert manifest.metadata["quantization"]["inference_int8"]["keras"]["auc"] > 0.8


def test_weights_file_holds_the_keras_head_in_keras_order(
    digits_bundle: Path, digits_export: Path
) -> None:
    from fedge.weights import Weights
    from tests.support.trained_models import load_model

    weights = Weights.from_bytes((digits_bundle / "weights.safetensors").read_bytes())
    model = load_model(digits_export)
    assert list(weights.names) == HEAD
    for name in HEAD:
        layer, variable = name.split("/")
        expected = getattr(model.get_layer(layer), variable).numpy()
        assert weights[name].tobytes() == expected.astype(np.float32).tobytes()


def test_trainable_model_is_builtin_only_with_a_static_train_batch(
    digits_bundle: Path, taxi_bundle: Path
) -> None:
    from edge_client.runtime import InferenceModel, TrainableModel, load_interpreter
    from quantize.convert import op_list

    for bundle, batch in ((digits_bundle, 32), (taxi_bundle, 16)):
        trainable = (bundle / "trainable.tflite").read_bytes()
        assert not [op for op in op_list(trainable) if op.startswith("CUSTOM")]
        signatures = load_interpreter(trainable).get_signature_list()
        assert set(signatures) == {"infer", "train_step", "get_weights", "set_weights"}
        device = TrainableModel(trainable)
        assert device.batch_size == batch
        assert device.weight_names == tuple(sorted(HEAD))
        for name in ("inference.tflite", "backbone.tflite"):
            model = InferenceModel(bundle / name)
            assert model.input_dtype == np.int8
            assert model.output_dtype == np.int8


def test_bundle_exits_1_and_leaves_nothing_when_the_head_cannot_train_on_device(
    digits_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gelu head differentiates to Erf, which no TFLite builtin computes."""
    import tensorflow as tf

    from fedge.cli import ExitCode
    from quantize.cli import quantize_cli
    from tests.support.trained_models import copy_export, load_model

    model = load_model(digits_export)

    def gelu_head(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
        config = layer.get_config()
        if layer.name == "head_hidden":
            config["activation"] = "gelu"
        return type(layer).from_config(config)

    gelu = tf.keras.models.clone_model(model, clone_function=gelu_head)
    gelu.set_weights(model.get_weights())
    export = copy_export(digits_export, tmp_path / "gelu")
    gelu.save(export / "saved_model.new")
    os.rename(export / "saved_model", export / "saved_model.old")
    os.rename(export / "saved_model.new", export / "saved_model")
    out = tmp_path / "bundle"

    code = quantize_cli(["bundle", str(export), "--out", str(out), "--quiet"])

    err = capsys.readouterr().err.splitlines()
    assert code == ExitCode.FAILED
    assert len(err) == 1
    assert err[0].startswith("fedge-quantize: error: conversion failed:")
    assert "Erf" in err[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_bundle_refuses_a_non_empty_out_dir_and_leaves_it_alone(
    digits_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedge.cli import ExitCode
    from quantize.cli import quantize_cli

    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text("an older bundle")

    assert quantize_cli(["bundle", str(digits_export), "--out", str(out)]) == ExitCode.USAGE

    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith("fedge-quantize: error: ")
    assert "exists and is not empty" in err[0]
    assert [p.name for p in out.iterdir()] == ["manifest.json"]
    assert (out / "manifest.json").read_text() == "an older bundle"


# The device-side probe (runs in a subprocess) -------------------------------------------

_BLOCKED = ("tensorflow", "keras", "tf_keras", "tensorflow_federated", "quantize", "cloud_trainer")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname.split(".", 1)[0] in _BLOCKED:
            raise ImportError(f"{fullname} is blocked: the device has no TensorFlow")
        return None


def _blocked_modules_loaded() -> list[str]:
    return sorted(name for name in sys.modules if name.split(".", 1)[0] in _BLOCKED)


def _tensorflow_import_fails() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return True
    return False


def _cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = probabilities[np.arange(labels.size), labels]
    return float(-np.log(np.maximum(picked, 1e-12)).mean())


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of matching rows (rows that are all zero in both count as 1)."""
    dot = (a * b).sum(axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.abs(a).sum(axis=1) == 0) & (np.abs(b).sum(axis=1) == 0)
    cosine = np.where(both_zero, 1.0, dot / np.maximum(norms, 1e-12))
    return float(cosine.mean())


def _probe(workdir: Path, bundle: Path) -> dict[str, Any]:
    """Everything a device does with a bundle, measured for the test to judge."""
    from edge_client.runtime import InferenceModel, TrainableModel, load_interpreter
    from fedge.bundle import WEIGHTS_FILE, verify_bundle
    from fedge.data import load_task, train_test_split
    from fedge.features import FeatureSpec
    from fedge.weights import Weights

    manifest = verify_bundle(bundle)
    reference = np.load(workdir / "reference.npz")
    keras_logits = reference["keras_logits"]

    # Held-out data from the manifest alone: raw data, its spec, the record's split.
    record = manifest.metadata["training_record"]
    dataset = load_task(manifest.task)
    train_idx, test_idx = train_test_split(
        dataset, test_fraction=record["test_fraction"], seed=record["seed"]
    )
    spec = FeatureSpec.from_dict(manifest.feature_spec)
    x_test = spec.transform(dataset.take(test_idx).columns)
    train = dataset.take(train_idx)  # the record's data_fraction is 1.0 for these exports
    x_train, y_train = spec.transform(train.columns), np.asarray(train.labels)

    inference = InferenceModel(bundle / "inference.tflite")
    int8_logits = inference.logits(x_test)

    trainable = TrainableModel(bundle / "trainable.tflite")
    runtime = type(load_interpreter(bundle / "trainable.tflite")).__module__
    device_logits = trainable.logits(x_test)
    shipped = Weights.from_bytes((bundle / WEIGHTS_FILE).read_bytes())
    initial = trainable.get_weights()
    initial_probabilities = trainable.infer(x_test)

    batch = trainable.batch_size
    seen = slice(0, PROBE_STEPS * batch)
    loss_before = _cross_entropy(trainable.infer(x_train[seen]), y_train[seen])
    step_losses = [
        trainable.train_step(
            x_train[i * batch : (i + 1) * batch],
            y_train[i * batch : (i + 1) * batch],
            np.ones(batch, np.float32),
            PROBE_LEARNING_RATE,
        )
        for i in range(PROBE_STEPS)
    ]
    loss_after = _cross_entropy(trainable.infer(x_train[seen]), y_train[seen])
    trained = trainable.get_weights()
    trained_probabilities = trainable.infer(x_test)

    trainable.set_weights(initial)
    restored = trainable.get_weights()
    restored_probabilities = trainable.infer(x_test)
    trainable.set_weights(trained)

    embedding = InferenceModel(bundle / "backbone.tflite").logits(x_test[:200])
    keras_embedding = reference["keras_embedding"]
    return {
        "tensorflow_import_fails": _tensorflow_import_fails(),
        "blocked_modules_loaded": _blocked_modules_loaded(),
        "runtime": runtime,
        "verified_files": sorted(manifest.files),
        "transform_max_abs_diff": float(np.abs(x_test - reference["x_test"]).max()),
        "inference_input_dtype": inference.input_dtype.name,
        "inference_agreement": float(
            (int8_logits.argmax(axis=1) == keras_logits.argmax(axis=1)).mean()
        ),
        "trainable_max_logit_gap": float(np.abs(device_logits - keras_logits).max()),
        "initial_weights_equal_safetensors": set(initial) == set(shipped.names)
        and all(initial[name].tobytes() == shipped[name].tobytes() for name in shipped.names),
        "loss_before": loss_before,
        "loss_after": loss_after,
        "step_losses": step_losses,
        "roundtrip_bit_exact": all(
            restored[name].tobytes() == initial[name].tobytes() for name in initial
        ),
        "restored_predictions_equal": bool(
            np.array_equal(restored_probabilities, initial_probabilities)
        ),
        "trained_predictions_restored": bool(
            np.array_equal(trainable.infer(x_test), trained_probabilities)
        ),
        "training_changed_predictions_by": float(
            np.abs(trained_probabilities - initial_probabilities).max()
        ),
        "embedding_shape": list(embedding.shape),
        "embedding_mean_cosine": _mean_cosine(embedding, keras_embedding),
    }


def _probe_main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "--probe":
        print("usage: python -m tests.quantize.test_bundle --probe WORKDIR BUNDLE", file=sys.stderr)
        return 2
    loaded = _blocked_modules_loaded()
    if loaded:
        print(f"blocked modules were imported before the blocker: {loaded}", file=sys.stderr)
        return 1
    sys.meta_path.insert(0, _Blocker())
    workdir, bundle = Path(argv[1]), Path(argv[2])
    result = _probe(workdir, bundle)
    (workdir / "results.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))
