"""Keras -> TFLite conversion in four modes, run with the edge runtime; the op list reader.

The digits CNN here has a 32-unit backbone Dense: with 16 units (~5k parameters) the
flatbuffer's fixed overhead (tensor names, signature, quantization parameters, ~3 KB) keeps
int8 at ~0.36-0.38x the float32 size; from ~10k parameters it is ~0.31x and falls with size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from edge_client.runtime import InferenceModel, TrainableModel
from fedge.errors import ConfigError
from quantize.convert import convert, op_list
from tests.support.digits_cnn import digits_split, trained_digits_cnn

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)
layers = tf.keras.layers


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    return digits_split()


@pytest.fixture(scope="module")
def keras_model(digits: dict[str, np.ndarray]) -> tf.keras.Model:
    return trained_digits_cnn(digits, backbone_units=32, metrics=["accuracy"])


@pytest.fixture(scope="module")
def keras_logits(keras_model: tf.keras.Model, digits: dict[str, np.ndarray]) -> np.ndarray:
    return keras_model(digits["x_test"]).numpy()


@pytest.fixture(scope="module")
def float32_bytes(keras_model: tf.keras.Model) -> bytes:
    return convert(keras_model, mode="float32")


@pytest.fixture(scope="module")
def int8_bytes(keras_model: tf.keras.Model, digits: dict[str, np.ndarray]) -> bytes:
    return convert(keras_model, mode="int8", representative=digits["x_train"][:300])


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(axis=1) == b.argmax(axis=1)).mean())


def test_int8_model_has_int8_input_and_output(int8_bytes: bytes) -> None:
    model = InferenceModel(int8_bytes)
    assert model.input_dtype == np.int8
    assert model.output_dtype == np.int8


def test_int8_model_is_at_most_035_of_float32_size(int8_bytes: bytes, float32_bytes: bytes) -> None:
    assert len(int8_bytes) <= 0.35 * len(float32_bytes), (len(int8_bytes), len(float32_bytes))


def test_int8_predictions_agree_with_keras_on_held_out_digits(
    int8_bytes: bytes, keras_logits: np.ndarray, digits: dict[str, np.ndarray]
) -> None:
    int8_logits = InferenceModel(int8_bytes).logits(digits["x_test"])
    assert int8_logits.dtype == np.float32
    assert _agreement(int8_logits, keras_logits) >= 0.95
    # Quantization costs little accuracy: the model itself is right most of the time.
    assert (int8_logits.argmax(axis=1) == digits["y_test"]).mean() >= 0.85


def test_int8_probabilities_are_distributions(
    int8_bytes: bytes, digits: dict[str, np.ndarray]
) -> None:
    probabilities = InferenceModel(int8_bytes).probabilities(digits["x_test"][:7])
    assert probabilities.shape == (7, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_float32_model_matches_keras_closely(
    float32_bytes: bytes, keras_logits: np.ndarray, digits: dict[str, np.ndarray]
) -> None:
    model = InferenceModel(float32_bytes)
    assert model.input_dtype == np.float32
    np.testing.assert_allclose(model.logits(digits["x_test"]), keras_logits, atol=1e-4)


@pytest.mark.parametrize("mode", ["dynamic", "float16"])
def test_weight_compressed_modes_are_smaller_and_agree(
    mode: str,
    keras_model: tf.keras.Model,
    float32_bytes: bytes,
    keras_logits: np.ndarray,
    digits: dict[str, np.ndarray],
) -> None:
    flatbuffer = convert(keras_model, mode=mode)  # type: ignore[arg-type]
    assert len(flatbuffer) < 0.7 * len(float32_bytes)
    model = InferenceModel(flatbuffer)
    assert model.input_dtype == np.float32
    assert _agreement(model.logits(digits["x_test"]), keras_logits) >= 0.97


def test_int8_rejects_representative_data_of_wrong_shape(keras_model: tf.keras.Model) -> None:
    with pytest.raises(ConfigError, match=r"shape \[n, 8, 8, 1\].*\(20, 64\)"):
        convert(keras_model, mode="int8", representative=np.zeros((20, 64), np.float32))


def test_int8_requires_representative_data(keras_model: tf.keras.Model) -> None:
    with pytest.raises(ConfigError, match="representative"):
        convert(keras_model, mode="int8")


def test_int8_rejects_non_finite_representative_data(keras_model: tf.keras.Model) -> None:
    data = np.zeros((4, 8, 8, 1), np.float32)
    data[1, 2, 3, 0] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        convert(keras_model, mode="int8", representative=data)


def test_convert_rejects_unknown_mode(keras_model: tf.keras.Model) -> None:
    with pytest.raises(ConfigError, match="int4"):
        convert(keras_model, mode="int4")  # type: ignore[arg-type]


def test_convert_rejects_representative_outside_int8(keras_model: tf.keras.Model) -> None:
    with pytest.raises(ConfigError, match="only used by mode 'int8'"):
        convert(keras_model, mode="float32", representative=np.zeros((2, 8, 8, 1), np.float32))


def test_op_list_names_builtin_ops_of_converted_models(
    float32_bytes: bytes, int8_bytes: bytes
) -> None:
    for flatbuffer in (float32_bytes, int8_bytes):
        ops = op_list(flatbuffer)
        assert {"CONV_2D", "FULLY_CONNECTED"} <= set(ops)
        assert not [op for op in ops if op.startswith("CUSTOM")]


def test_op_list_rejects_bytes_that_are_not_tflite() -> None:
    with pytest.raises(ConfigError, match="TFL3"):
        op_list(b"\x00" * 64)


def test_inference_model_loads_from_path_like_from_bytes(
    tmp_path: Path, int8_bytes: bytes, digits: dict[str, np.ndarray]
) -> None:
    path = tmp_path / "inference.tflite"
    path.write_bytes(int8_bytes)
    x = digits["x_test"][:5]
    np.testing.assert_array_equal(
        InferenceModel(path).logits(x), InferenceModel(int8_bytes).logits(x)
    )


def test_runtime_refuses_bytes_that_are_not_a_model_and_models_without_signatures(
    float32_bytes: bytes,
) -> None:
    with pytest.raises(ConfigError, match="cannot load"):
        InferenceModel(b"not a model at all")
    with pytest.raises(ConfigError, match="not a trainable fedge model"):
        TrainableModel(float32_bytes)
