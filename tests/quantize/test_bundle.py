"""``fedge-quantize bundle``: the edge bundle, checked on a device with no TensorFlow.

The device side runs in a subprocess, :mod:`tests.support.bundle_probe`: TensorFlow,
``quantize`` and ``cloud_trainer`` are unimportable there; the probe verifies the manifest's
sha256s, rebuilds the held-out data from the manifest alone (raw task data + the manifest's
feature spec + the split in its training record), and runs the three models with the TFLite
runtime. The test compares what it measured with the Keras model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
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
    "head.tflite",
    "inference.tflite",
    "manifest.json",
    "trainable.tflite",
    "weights.safetensors",
]
TAXI_ARGS = ["--batch-size", "16", "--model-version", "taxi-v1.0", "--representative", "100"]
PROBE_STEPS = 20


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
    steps = str(PROBE_STEPS)
    run = subprocess.run(
        [sys.executable, "-m", "tests.support.bundle_probe", str(workdir), str(bundle), steps],
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


@pytest.mark.parametrize("task", ["digits", "taxi"])
def test_head_model_takes_float_embeddings_to_the_keras_logits_with_the_bundle_head(
    task: str, request: pytest.FixtureRequest
) -> None:
    from cloud_trainer.models import embedding_model
    from edge_client.runtime import TrainableModel, load_interpreter
    from fedge.bundle import verify_bundle
    from fedge.weights import Weights
    from quantize.convert import op_list

    bundle = request.getfixturevalue(f"{task}_bundle")
    reference = _keras_reference(request.getfixturevalue(f"{task}_export"))
    manifest = verify_bundle(bundle)
    assert "head.tflite" in manifest.files
    flatbuffer = (bundle / "head.tflite").read_bytes()
    assert not [op for op in op_list(flatbuffer) if op.startswith("CUSTOM")]
    assert set(load_interpreter(flatbuffer).get_signature_list()) == {
        "infer", "train_step", "get_weights", "set_weights",
    }  # fmt: skip
    head = TrainableModel(flatbuffer)
    assert head.batch_size == manifest.train_batch_size
    assert head.weight_names == tuple(sorted(manifest.head))
    shipped = Weights.from_bytes((bundle / "weights.safetensors").read_bytes())
    on_device = head.get_weights()
    assert all(on_device[n].tobytes() == shipped[n].tobytes() for n in manifest.head)

    from tests.support.trained_models import load_model

    model = load_model(request.getfixturevalue(f"{task}_export"))
    embeddings = embedding_model(model).predict(reference["x_test"], verbose=0)
    assert head.input_shape == (embeddings.shape[1],)
    gap = np.abs(head.logits(embeddings) - reference["keras_logits"]).max()
    assert gap <= 1e-3
    assert manifest.metadata["quantization"]["head_max_abs_logit_diff"] <= 1e-3


def test_a_head_that_is_not_a_chain_gets_no_head_model_and_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import tensorflow as tf

    from quantize.trainable import head_model

    layers = tf.keras.layers
    inputs = tf.keras.Input((4,), name="backbone_input")
    embedding = layers.Dense(8, name="backbone_embedding")(inputs)
    left = layers.Dense(3, name="head_left")(embedding)
    right = layers.Dense(3, name="head_right")(embedding)
    model = tf.keras.Model(inputs, layers.Add(name="head_sum")([left, right]), name="forked")

    with caplog.at_level("WARNING", logger="quantize.trainable"):
        assert head_model(model, 8) is None
    assert "no head-only model for 'forked'" in caplog.text
    assert "'head_right' is not applied once to the output of 'head_left'" in caplog.text


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
