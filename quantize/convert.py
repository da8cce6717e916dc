"""Keras model -> TFLite flatbuffer in one of four numeric modes, and the ops a model uses.

``float32`` keeps every tensor in float; ``dynamic`` stores weights as int8 and computes in
float; ``float16`` stores weights as float16; ``int8`` is full-integer quantization (int8 input
and output, builtin int8 kernels only) calibrated on a representative sample, the format the
edge bundle's ``inference.tflite`` uses.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any, Literal, get_args

import numpy as np
import tensorflow as tf
from numpy.typing import NDArray

from fedge.errors import ConfigError

__all__ = ["Mode", "convert", "op_list"]

logger = logging.getLogger(__name__)

Mode = Literal["float32", "dynamic", "float16", "int8"]
_MODES: tuple[str, ...] = get_args(Mode)
_TFLITE_IDENTIFIER = b"TFL3"


def convert(
    model: tf.keras.Model,
    *,
    mode: Mode,
    representative: NDArray[Any] | None = None,
) -> bytes:
    """Convert ``model`` to a TFLite flatbuffer in ``mode``.

    ``representative`` (int8 only, required there) is a float array ``[n, *input_shape]`` of
    typical inputs, already preprocessed as the model expects; each row calibrates once.
    """
    if mode not in _MODES:
        raise ConfigError(f"mode must be one of {', '.join(_MODES)}; got {mode!r}")
    if mode != "int8" and representative is not None:
        raise ConfigError(f"representative data is only used by mode 'int8', not {mode!r}")

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        sample = _check_representative(model, representative)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _one_row_at_a_time(sample)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8

    try:
        with warnings.catch_warnings():
            # TF warns about missing input statistics even though calibration provides them.
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            flatbuffer = converter.convert()
    except Exception as exc:  # the converter raises ConverterError, ValueError, RuntimeError...
        raise ConfigError(f"model {model.name!r} cannot be converted to {mode}: {exc}") from exc
    logger.info("converted %r to %s TFLite: %d bytes", model.name, mode, len(flatbuffer))
    return bytes(flatbuffer)


def op_list(tflite_bytes: bytes) -> list[str]:
    """Names of the operators a TFLite model uses, in the order of its operator-code table.

    Builtins are named as in the TFLite schema (``FULLY_CONNECTED``); custom ops, Flex ops
    included, as ``CUSTOM:<code>`` (``CUSTOM:FlexConv2DBackpropFilter``).
    """
    # The flatbuffer schema ships inside TensorFlow; parsing it sees every subgraph
    # (signatures, variable initializers), which the analyzer's text output does not promise.
    from tensorflow.lite.python import schema_py_generated as schema

    if len(tflite_bytes) < 8 or bytes(tflite_bytes[4:8]) != _TFLITE_IDENTIFIER:
        raise ConfigError(
            f"expected a TFLite flatbuffer (identifier {_TFLITE_IDENTIFIER!r} at byte 4), "
            f"got {len(tflite_bytes)} bytes starting {bytes(tflite_bytes[:8])!r}"
        )
    builtin_names = {
        code: name for name, code in vars(schema.BuiltinOperator).items() if name.isupper()
    }
    try:
        model = schema.Model.GetRootAsModel(bytearray(tflite_bytes), 0)
        names: list[str] = []
        for i in range(model.OperatorCodesLength()):
            op_code = model.OperatorCodes(i)
            # Codes past 127 live in builtin_code; old files only fill deprecated_builtin_code.
            code = max(op_code.BuiltinCode(), op_code.DeprecatedBuiltinCode())
            if code == schema.BuiltinOperator.CUSTOM:
                custom = op_code.CustomCode()
                names.append(f"CUSTOM:{custom.decode() if custom else '?'}")
            else:
                names.append(builtin_names.get(code, f"BUILTIN_{code}"))
    except Exception as exc:  # a truncated buffer surfaces as IndexError/struct.error
        raise ConfigError(f"cannot read the TFLite operator table: {exc}") from exc
    return names


def _check_representative(
    model: tf.keras.Model, representative: NDArray[Any] | None
) -> NDArray[np.float32]:
    if representative is None:
        raise ConfigError("mode 'int8' needs representative data: an array [n, *input_shape]")
    if len(model.inputs) != 1:
        raise ConfigError(f"int8 calibration supports one model input, got {len(model.inputs)}")
    if not isinstance(representative, np.ndarray):
        raise ConfigError(
            f"representative must be a numpy array, got {type(representative).__name__}"
        )
    if not np.issubdtype(representative.dtype, np.number):
        raise ConfigError(f"representative must be numeric, got dtype {representative.dtype}")
    expected = tuple(model.inputs[0].shape)  # (None, *feature dims)
    got = representative.shape
    fits = len(got) == len(expected) and all(
        want is None or want == have for want, have in zip(expected[1:], got[1:], strict=True)
    )
    if not fits:
        shown = ", ".join("n" if d is None else str(d) for d in expected)
        raise ConfigError(
            f"representative data must have shape [{shown}] to match the model input; got {got}"
        )
    if got[0] == 0:
        raise ConfigError("representative data is empty; give at least one example")
    sample = representative.astype(np.float32)
    if not np.isfinite(sample).all():
        raise ConfigError("representative data holds NaN or infinite values")
    return sample


def _one_row_at_a_time(sample: NDArray[np.float32]) -> Iterator[list[NDArray[np.float32]]]:
    for i in range(sample.shape[0]):
        yield [sample[i : i + 1]]
