"""The on-device-trainable TFLite model: builtin-only, Keras parity, and a TensorFlow-free edge.

A digits CNN is trained briefly in Keras, its conv backbone frozen, and its head (Keras relu,
rewritten on conversion) trained on the device side: in this process through
``edge_client.runtime`` and in a subprocess where ``import tensorflow`` fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from edge_client.runtime import TrainableModel, load_interpreter
from fedge.errors import (
    ConfigError,
    DtypeMismatchError,
    MissingTensorError,
    ShapeMismatchError,
    UnknownTensorError,
)
from quantize.convert import op_list
from quantize.trainable import build_trainable, trainable_weight_names, trainable_weights
from tests.support import REPO_ROOT
from tests.support.blocker import block_in_this_process
from tests.support.digits_cnn import digits_split, trained_digits_cnn

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)
BATCH = 32
HEAD_NAMES = ["head_hidden/kernel", "head_hidden/bias", "head_out/kernel", "head_out/bias"]
layers = tf.keras.layers


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    return digits_split()


@pytest.fixture(scope="module")
def keras_model(digits: dict[str, np.ndarray]) -> tf.keras.Model:
    """Conv backbone (frozen after Keras training) + a relu Dense head."""
    model = trained_digits_cnn(digits, backbone_units=16)
    for name in ("backbone_conv", "backbone_flatten", "backbone_dense"):
        model.get_layer(name).trainable = False
    return model


@pytest.fixture(scope="module")
def trainable_bytes(keras_model: tf.keras.Model) -> bytes:
    return build_trainable(keras_model, batch_size=BATCH, num_classes=10)


def _keras_sgd_step(
    model: tf.keras.Model, x: np.ndarray, y: np.ndarray, learning_rate: float
) -> tuple[float, dict[str, np.ndarray]]:
    """One Keras SGD step on copies of the head: the reference for the device step."""
    with tf.GradientTape() as tape:
        logits = model(x, training=False)
        loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
    gradients = tape.gradient(loss, model.trainable_variables)
    copies = [tf.Variable(v) for v in model.trainable_variables]
    tf.keras.optimizers.SGD(learning_rate).apply_gradients(zip(gradients, copies, strict=True))
    names = trainable_weight_names(model)
    return float(loss), {n: c.numpy() for n, c in zip(names, copies, strict=True)}


def _run_probe(
    workdir: Path,
    model_bytes: bytes,
    keras_model: tf.keras.Model,
    digits: dict[str, np.ndarray],
    *extra_args: str,
) -> dict[str, Any]:
    """Run the edge probe in a fresh interpreter and return what it measured."""
    (workdir / "trainable.tflite").write_bytes(model_bytes)
    np.savez(
        workdir / "data.npz",
        x_test=digits["x_test"],
        keras_probabilities=tf.nn.softmax(keras_model(digits["x_test"])).numpy(),
        x_train=digits["x_train"],
        y_train=digits["y_train"],
    )
    run = subprocess.run(
        [sys.executable, "-m", "tests.support.edge_probe", str(workdir), *extra_args],
        cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result: dict[str, Any] = json.loads((workdir / "results.json").read_text())
    return result


def test_edge_probe_matches_keras_when_tensorflow_cannot_be_imported(
    tmp_path: Path,
    trainable_bytes: bytes,
    keras_model: tf.keras.Model,
    digits: dict[str, np.ndarray],
) -> None:
    result = _run_probe(tmp_path, trainable_bytes, keras_model, digits)

    assert result["tensorflow_blocked"] is True
    assert result["tensorflow_loaded"] is False
    assert result["runtime"] == "tflite_runtime.interpreter"
    assert result["weight_names"] == sorted(HEAD_NAMES)
    assert result["agreement"] >= 0.97
    assert result["max_probability_gap"] < 1e-4
    assert result["loss_after"] < result["loss_before"]
    assert len(result["step_losses"]) == 20
    assert result["roundtrip_bit_exact"] is True
    assert result["restored_predictions_equal"] is True
    assert result["set_weights_changes_predictions_by"] > 1e-3


def test_edge_probe_falls_back_to_ai_edge_litert_when_tflite_runtime_is_missing(
    tmp_path: Path,
    trainable_bytes: bytes,
    keras_model: tf.keras.Model,
    digits: dict[str, np.ndarray],
) -> None:
    result = _run_probe(tmp_path, trainable_bytes, keras_model, digits, "--block", "tflite_runtime")

    assert result["runtime"] == "ai_edge_litert.interpreter"
    assert result["tensorflow_loaded"] is False
    assert result["agreement"] >= 0.97
    assert result["loss_after"] < result["loss_before"]
    assert result["roundtrip_bit_exact"] is True


def test_load_interpreter_raises_config_error_without_any_runtime(
    monkeypatch: pytest.MonkeyPatch, trainable_bytes: bytes
) -> None:
    block_in_this_process(monkeypatch, ("tflite_runtime", "ai_edge_litert"))
    with pytest.raises(ConfigError, match="no TFLite runtime"):
        load_interpreter(trainable_bytes)


@pytest.mark.parametrize("real", [BATCH, 20])
def test_train_step_equals_keras_sgd_step_when_batch_is_full_or_padded(
    real: int, trainable_bytes: bytes, keras_model: tf.keras.Model, digits: dict[str, np.ndarray]
) -> None:
    x, y = digits["x_train"][:real], digits["y_train"][:real]
    keras_loss, keras_weights = _keras_sgd_step(keras_model, x, y, learning_rate=0.1)

    pad = BATCH - real
    # Padding rows are real-looking digits with wrong labels: only their zero weight hides them.
    x_batch = np.concatenate([x, digits["x_test"][:pad]])
    y_batch = np.concatenate([y, (digits["y_test"][:pad] + 1) % 10])
    weights = np.concatenate([np.ones(real), np.zeros(pad)]).astype(np.float32)
    device = TrainableModel(trainable_bytes)
    device_loss = device.train_step(x_batch, y_batch, weights, 0.1)

    assert device_loss == pytest.approx(keras_loss, abs=1e-5)
    device_weights = device.get_weights()
    for name in HEAD_NAMES:
        np.testing.assert_allclose(device_weights[name], keras_weights[name], rtol=0, atol=1e-5)
    assert not np.array_equal(device_weights["head_out/kernel"], keras_model.weights[-2].numpy())


@pytest.mark.parametrize(
    "activation",
    [
        pytest.param(lambda: layers.Activation("relu"), id="relu"),
        pytest.param(lambda: layers.ReLU(max_value=6.0), id="relu6-layer"),
        pytest.param(lambda: layers.LeakyReLU(alpha=0.1), id="leaky-layer"),
        pytest.param(lambda: layers.Activation("leaky_relu"), id="leaky_relu"),
        pytest.param(lambda: layers.Activation("elu"), id="elu"),
        pytest.param(lambda: layers.Activation("tanh"), id="tanh"),
    ],
)
def test_train_step_matches_keras_gradient_when_head_activation_is_rewritten(
    activation: object,
) -> None:
    tf.keras.utils.set_random_seed(1)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((4,)),
            layers.Dense(3, activation="relu", name="hidden"),
            layers.Dense(3, name="hidden2"),
            activation(),  # type: ignore[operator]
            layers.Dense(2, name="out"),
        ]
    )
    # Zero rows with zero biases put pre-activations exactly at 0, where relu's gradient is 0;
    # the large row crosses relu6's cap.
    x = np.array([[1, -2, 0.5, 3], [0, 0, 0, 0], [-1, 2, -0.5, 1], [40, 30, -20, 10]], np.float32)
    y = np.array([0, 1, 1, 0])
    keras_loss, keras_weights = _keras_sgd_step(model, x, y, learning_rate=0.5)

    device = TrainableModel(build_trainable(model, batch_size=4, num_classes=2))
    assert device.train_step(x, y, np.ones(4, np.float32), 0.5) == pytest.approx(keras_loss)
    for name, value in device.get_weights().items():
        np.testing.assert_allclose(value, keras_weights[name], rtol=0, atol=1e-5)


def test_build_trainable_keeps_nested_backbone_frozen_when_cloning_for_rewrite() -> None:
    tf.keras.utils.set_random_seed(3)
    backbone = tf.keras.Sequential(
        [
            tf.keras.Input((8, 8, 1)),
            layers.Conv2D(4, 3, activation="relu", name="conv"),
            layers.Flatten(),
            layers.Dense(8, activation="relu", name="features"),
        ],
        name="backbone",
    )
    backbone.trainable = False
    inputs = tf.keras.Input((8, 8, 1))
    hidden = layers.Dense(8, activation="relu", name="head_hidden")(backbone(inputs))
    model = tf.keras.Model(inputs, layers.Dense(10, name="head_out")(hidden))
    x = np.random.default_rng(3).uniform(size=(8, 8, 8, 1)).astype(np.float32)
    y = np.arange(8)

    device = TrainableModel(build_trainable(model, batch_size=8, num_classes=10))
    assert device.weight_names == tuple(sorted(HEAD_NAMES))
    np.testing.assert_allclose(device.logits(x), model(x).numpy(), atol=1e-5)
    keras_loss, keras_weights = _keras_sgd_step(model, x, y, learning_rate=0.1)
    assert device.train_step(x, y, np.ones(8, np.float32), 0.1) == pytest.approx(keras_loss)
    for name, value in device.get_weights().items():
        np.testing.assert_allclose(value, keras_weights[name], rtol=0, atol=1e-5)


def test_build_trainable_names_the_non_builtin_op_when_head_uses_gelu() -> None:
    model = tf.keras.Sequential(
        [tf.keras.Input((4,)), layers.Dense(3, activation="gelu", name="hidden"), layers.Dense(2)]
    )
    with pytest.raises(ConfigError, match=r"not TFLite builtins: Erf \(from .*hidden"):
        build_trainable(model, batch_size=4, num_classes=2)


def test_train_pads_last_batch_and_lowers_loss_when_examples_are_not_a_batch_multiple(
    trainable_bytes: bytes, digits: dict[str, np.ndarray]
) -> None:
    device = TrainableModel(trainable_bytes)
    n = 3 * BATCH + 7
    result = device.train(
        digits["x_train"][:n],
        digits["y_train"][:n],
        epochs=3,
        learning_rate=0.05,
        rng=np.random.default_rng(0),
    )
    assert result.num_examples == n
    assert result.num_steps == 3 * 4
    assert result.epoch_losses[-1] < result.epoch_losses[0]


def test_trainable_model_uses_builtin_ops_only_when_head_has_keras_relu(
    trainable_bytes: bytes, keras_model: tf.keras.Model
) -> None:
    ops = op_list(trainable_bytes)
    assert not [op for op in ops if op.startswith("CUSTOM")]
    assert {"ASSIGN_VARIABLE", "READ_VARIABLE", "SELECT_V2"} <= set(ops)
    # The rewrite happened on a clone: the caller's model still has its Keras relu.
    assert keras_model.get_layer("head_hidden").activation is tf.keras.activations.relu


def test_trainable_model_has_four_signatures_and_static_train_batch(
    trainable_bytes: bytes,
) -> None:
    device = TrainableModel(trainable_bytes)
    signatures = load_interpreter(trainable_bytes).get_signature_list()
    assert set(signatures) == {"infer", "train_step", "get_weights", "set_weights"}
    assert sorted(signatures["train_step"]["inputs"]) == [
        "learning_rate",
        "sample_weight",
        "x",
        "y",
    ]
    assert device.batch_size == BATCH
    assert device.input_shape == (8, 8, 1)
    assert device.num_classes == 10
    assert device.infer(np.zeros((3, 8, 8, 1), np.float32)).shape == (3, 10)


def test_trainable_weights_follow_keras_order_with_layer_names(
    keras_model: tf.keras.Model,
) -> None:
    assert trainable_weight_names(keras_model) == HEAD_NAMES
    weights = trainable_weights(keras_model)
    assert list(weights) == HEAD_NAMES
    np.testing.assert_array_equal(
        weights["head_out/kernel"], keras_model.get_layer("head_out").kernel.numpy()
    )


def test_trainable_weight_names_include_nested_model_path() -> None:
    inner = tf.keras.Sequential([tf.keras.Input((3,)), layers.Dense(2, name="dense")], name="head")
    outer = tf.keras.Sequential([tf.keras.Input((3,)), inner], name="outer")
    assert trainable_weight_names(outer) == ["head/dense/kernel", "head/dense/bias"]


def test_device_weights_equal_cloud_weights_before_training(
    trainable_bytes: bytes, keras_model: tf.keras.Model
) -> None:
    device_weights = TrainableModel(trainable_bytes).get_weights()
    cloud_weights = trainable_weights(keras_model)
    assert set(device_weights) == set(cloud_weights)
    for name, value in cloud_weights.items():
        assert device_weights[name].tobytes() == value.tobytes()


def test_build_trainable_refuses_trainable_conv_naming_the_layer() -> None:
    model = tf.keras.Sequential(
        [
            tf.keras.Input((8, 8, 1)),
            layers.Conv2D(4, 3, name="tunable_conv"),
            layers.Flatten(),
            layers.Dense(10, name="head_out"),
        ]
    )
    with pytest.raises(ConfigError, match=r"tunable_conv.*Conv2D"):
        build_trainable(model, batch_size=4, num_classes=10)


def test_build_trainable_refuses_model_without_trainable_variables() -> None:
    model = tf.keras.Sequential([tf.keras.Input((4,)), layers.Dense(2)])
    model.trainable = False
    with pytest.raises(ConfigError, match="no trainable variables"):
        build_trainable(model, batch_size=4, num_classes=2)


def test_build_trainable_refuses_output_that_is_not_num_classes_logits() -> None:
    model = tf.keras.Sequential([tf.keras.Input((4,)), layers.Dense(3)])
    with pytest.raises(ConfigError, match=r"logits \[batch, 5\]"):
        build_trainable(model, batch_size=4, num_classes=5)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_build_trainable_refuses_invalid_batch_size(batch_size: object) -> None:
    model = tf.keras.Sequential([tf.keras.Input((4,)), layers.Dense(2)])
    with pytest.raises(ConfigError, match="batch_size"):
        build_trainable(model, batch_size=batch_size, num_classes=2)  # type: ignore[arg-type]


def test_infer_returns_probabilities_when_output_layer_has_softmax() -> None:
    tf.keras.utils.set_random_seed(2)
    model = tf.keras.Sequential(
        [tf.keras.Input((4,)), layers.Dense(3, activation="softmax", name="out")]
    )
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    device = TrainableModel(build_trainable(model, batch_size=2, num_classes=3))
    np.testing.assert_allclose(device.infer(x), model(x).numpy(), atol=1e-6)


def test_set_weights_rejects_wrong_names_shapes_and_dtypes(trainable_bytes: bytes) -> None:
    device = TrainableModel(trainable_bytes)
    good = device.get_weights()
    with pytest.raises(UnknownTensorError, match="head_extra/kernel"):
        device.set_weights({**good, "head_extra/kernel": np.zeros(3, np.float32)})
    with pytest.raises(MissingTensorError, match="head_out/bias"):
        device.set_weights({k: v for k, v in good.items() if k != "head_out/bias"})
    with pytest.raises(ShapeMismatchError, match=r"head_out/bias.*\(10,\)"):
        device.set_weights({**good, "head_out/bias": np.zeros(9, np.float32)})
    with pytest.raises(DtypeMismatchError, match="float32"):
        device.set_weights({**good, "head_out/bias": good["head_out/bias"].astype(np.float64)})
    after = device.get_weights()
    assert all(np.array_equal(after[name], good[name]) for name in good)


def test_train_step_rejects_batch_of_wrong_size(trainable_bytes: bytes) -> None:
    device = TrainableModel(trainable_bytes)
    with pytest.raises(ConfigError, match=f"exactly {BATCH} examples"):
        device.train_step(
            np.zeros((BATCH - 1, 8, 8, 1)), np.zeros(BATCH - 1, np.int64), np.ones(BATCH - 1), 0.1
        )
