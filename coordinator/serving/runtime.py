"""TFLite interpreters for cloud serving, without TensorFlow.

The loader tries ``tflite_runtime`` and then ``ai_edge_litert`` (both in the cloud lock),
the runtimes a device uses, so the cloud computes what the device computes.
:class:`PlainModel` runs a one-input, one-output model (int8 or float), quantizing inputs
and dequantizing outputs with :mod:`fedge.quantization` exactly as the device does;
:class:`SignatureModel` runs the ``infer`` and ``set_weights`` signatures of a trainable
model (``trainable.tflite`` or ``head.tflite``). Neither is thread-safe: callers hold a lock.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedge.errors import BundleError, ConfigError
from fedge.quantization import dequantize_output, quantize_input

__all__ = ["PlainModel", "SignatureModel", "load_interpreter"]

logger = logging.getLogger(__name__)

_RUNTIMES = ("tflite_runtime.interpreter", "ai_edge_litert.interpreter")


def load_interpreter(model: bytes, *, what: str) -> Any:
    """A TFLite ``Interpreter`` over flatbuffer bytes; BundleError when it cannot load
    (``what`` names the file in the message), ConfigError when no runtime is installed."""
    interpreter_class = _interpreter_class()
    try:
        return interpreter_class(model_content=bytes(model))
    except (ValueError, RuntimeError) as exc:
        raise BundleError(f"cannot load {what}: {exc}", file=what) from exc


def _interpreter_class() -> Any:
    for module_name in _RUNTIMES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        logger.debug("TFLite runtime: %s", module_name)
        return module.Interpreter
    raise ConfigError(
        "no TFLite runtime is installed: install tflite-runtime==2.14.0 or ai-edge-litert"
    )


def _check_input(x: NDArray[Any], shape: tuple[int, ...], what: str) -> NDArray[np.float32]:
    features = np.asarray(x, dtype=np.float32)
    if features.ndim != len(shape) + 1 or features.shape[1:] != shape:
        raise ConfigError(
            f"{what} takes inputs of shape [n, {', '.join(map(str, shape))}], got {features.shape}"
        )
    return np.ascontiguousarray(features)


class PlainModel:
    """A model with one input and one output; float32 in, float32 out."""

    def __init__(self, model: bytes, *, what: str) -> None:
        self.what = what
        self._interpreter = load_interpreter(model, what=what)
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleError(
                f"{what}: expected one input and one output, got {len(inputs)} and {len(outputs)}",
                file=what,
            )
        self._input, self._output = inputs[0], outputs[0]
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in self._input["shape"][1:])
        self._batch = -1

    def run(self, x: NDArray[Any]) -> NDArray[np.float32]:
        """The dequantized outputs ``[n, ...]`` of a float batch ``[n, *input_shape]``."""
        features = _check_input(x, self.input_shape, self.what)
        n = features.shape[0]
        if n != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], [n, *self.input_shape])
            self._interpreter.allocate_tensors()
            self._batch = n
        self._interpreter.set_tensor(self._input["index"], quantize_input(features, self._input))
        self._interpreter.invoke()
        return dequantize_output(self._interpreter.get_tensor(self._output["index"]), self._output)


class SignatureModel:
    """The ``infer`` / ``get_weights`` / ``set_weights`` signatures of a trainable model."""

    def __init__(self, model: bytes, *, what: str) -> None:
        self.what = what
        self._interpreter = load_interpreter(model, what=what)
        available = set(self._interpreter.get_signature_list())
        missing = [k for k in ("infer", "get_weights", "set_weights") if k not in available]
        if missing:
            raise BundleError(f"{what} lacks the signatures {missing}", file=what)
        self._infer = self._interpreter.get_signature_runner("infer")
        self._get = self._interpreter.get_signature_runner("get_weights")
        self._set = self._interpreter.get_signature_runner("set_weights")
        x = self._infer.get_input_details()["x"]
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in x["shape_signature"][1:])
        self.weight_names: tuple[str, ...] = tuple(sorted(self._set.get_input_details()))

    def get_weights(self) -> dict[str, NDArray[np.float32]]:
        values = self._get()
        return {name: np.array(values[name], dtype=np.float32) for name in self.weight_names}

    def set_weights(self, weights: dict[str, NDArray[np.float32]]) -> None:
        if set(weights) != set(self.weight_names):
            raise BundleError(
                f"{self.what} has the weights {list(self.weight_names)}, got {sorted(weights)}",
                file=self.what,
            )
        self._set(**{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()})

    def logits(self, x: NDArray[Any]) -> NDArray[np.float32]:
        """The ``logits`` output of ``infer`` for a batch ``[n, *input_shape]``."""
        features = _check_input(x, self.input_shape, self.what)
        return np.array(self._infer(x=features)["logits"], dtype=np.float32)
