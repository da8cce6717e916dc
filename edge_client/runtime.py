"""TFLite models on the device: loading, int8/float inference and on-device training.

Only numpy and a TFLite runtime are imported here, never TensorFlow: the loader tries
``tflite_runtime`` and then ``ai_edge_litert``. :class:`TrainableModel` drives the four
signatures that ``quantize.trainable.build_trainable`` writes; :class:`InferenceModel` runs a
plain (int8 or float) model, quantizing inputs and dequantizing outputs.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedge.errors import (
    ConfigError,
    DtypeMismatchError,
    MissingTensorError,
    NonFiniteError,
    ShapeMismatchError,
    UnknownTensorError,
)
from fedge.quantization import dequantize_output, quantize_input
from fedge.validation import check_int

__all__ = ["InferenceModel", "TrainResult", "TrainableModel", "load_interpreter"]

logger = logging.getLogger(__name__)

ModelSource = bytes | str | os.PathLike[str]
_RUNTIMES = ("tflite_runtime.interpreter", "ai_edge_litert.interpreter")
_SIGNATURES = ("infer", "train_step", "get_weights", "set_weights")


def load_interpreter(model: ModelSource, *, num_threads: int | None = None) -> Any:
    """A TFLite ``Interpreter`` for ``model`` (flatbuffer bytes or a file path).

    Tries ``tflite_runtime`` then ``ai_edge_litert``; raises :class:`ConfigError` when neither
    is installed or the model cannot be loaded.
    """
    interpreter_class = _interpreter_class()
    try:
        if isinstance(model, bytes | bytearray | memoryview):
            interpreter = interpreter_class(model_content=bytes(model), num_threads=num_threads)
        elif isinstance(model, str | os.PathLike):
            if not os.path.isfile(model):
                raise ConfigError(f"no TFLite model file at {os.fspath(model)!r}")
            interpreter = interpreter_class(model_path=os.fspath(model), num_threads=num_threads)
        else:
            raise ConfigError(f"model must be bytes or a path, got {type(model).__name__}")
    except ConfigError:
        raise
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"cannot load the TFLite model: {exc}") from exc
    return interpreter


def _interpreter_class() -> Any:
    for module_name in _RUNTIMES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        logger.debug("TFLite runtime: %s", module_name)
        return module.Interpreter
    raise ConfigError(
        "no TFLite runtime is installed: install tflite-runtime==2.14.0 "
        "(pip install 'fedge[edge]') or ai-edge-litert"
    )


@dataclass(frozen=True)
class TrainResult:
    """What :meth:`TrainableModel.train` did: the weighted mean loss of each epoch."""

    epoch_losses: tuple[float, ...]
    num_examples: int
    num_steps: int


class TrainableModel:
    """The on-device-trainable model: inference, SGD steps and weight exchange.

    All four signatures share one interpreter, so a ``train_step`` or ``set_weights`` changes
    what ``infer`` computes.
    """

    def __init__(self, model: ModelSource, *, num_threads: int | None = None) -> None:
        self._interpreter = load_interpreter(model, num_threads=num_threads)
        available = set(self._interpreter.get_signature_list())
        missing = [key for key in _SIGNATURES if key not in available]
        if missing:
            raise ConfigError(
                f"not a trainable fedge model: signatures {missing} are missing "
                f"(found {sorted(available)})"
            )
        self._runners = {key: self._interpreter.get_signature_runner(key) for key in _SIGNATURES}
        train_inputs = self._runners["train_step"].get_input_details()
        x_shape = tuple(int(d) for d in train_inputs["x"]["shape"])
        self.batch_size: int = x_shape[0]
        self.input_shape: tuple[int, ...] = x_shape[1:]
        self._label_dtype = np.dtype(train_inputs["y"]["dtype"])
        logits = self._runners["infer"].get_output_details()["logits"]
        self.num_classes: int = int(logits["shape_signature"][-1])
        weight_inputs = self._runners["set_weights"].get_input_details()
        self._weight_specs: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {
            name: (tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"]))
            for name, detail in sorted(weight_inputs.items())
        }

    @property
    def weight_names(self) -> tuple[str, ...]:
        """Names of the trainable tensors, sorted (TFLite orders signature keys by name)."""
        return tuple(self._weight_specs)

    def logits(self, x: NDArray[Any]) -> NDArray[np.float32]:
        """Logits ``[n, num_classes]`` for a batch ``[n, *input_shape]``."""
        return np.array(self._runners["infer"](x=self._features(x, batch=None))["logits"])

    def infer(self, x: NDArray[Any]) -> NDArray[np.float32]:
        """Class probabilities ``[n, num_classes]`` for a batch ``[n, *input_shape]``."""
        return np.array(self._runners["infer"](x=self._features(x, batch=None))["probabilities"])

    def train_step(
        self, x: NDArray[Any], y: NDArray[Any], sample_weight: NDArray[Any], learning_rate: float
    ) -> float:
        """One SGD step on exactly ``batch_size`` examples; returns the weighted mean loss."""
        features = self._features(x, batch=self.batch_size)
        labels = self._labels(y, batch=self.batch_size)
        weights = np.asarray(sample_weight, dtype=np.float32)
        if weights.shape != (self.batch_size,):
            raise ConfigError(
                f"sample_weight must have shape ({self.batch_size},), got {weights.shape}"
            )
        if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise ConfigError("sample_weight must be finite, non-negative and not all zero")
        return self._step(features, labels, weights, _check_rate(learning_rate))

    def _step(
        self,
        features: NDArray[np.float32],
        labels: NDArray[Any],
        weights: NDArray[np.float32],
        rate: np.float32,
    ) -> float:
        """One ``train_step`` on inputs already checked and converted."""
        result = self._runners["train_step"](
            x=features, y=labels, sample_weight=weights, learning_rate=rate
        )
        return float(result["loss"])

    def train(
        self,
        x: NDArray[Any],
        y: NDArray[Any],
        *,
        epochs: int,
        learning_rate: float,
        rng: np.random.Generator | None = None,
    ) -> TrainResult:
        """SGD over ``x``/``y`` in static-size batches for ``epochs`` epochs.

        The last, short batch of an epoch is padded to ``batch_size`` with weight-0 rows, so
        its step minimises exactly the mean loss of its real examples. With ``rng`` the order
        is reshuffled every epoch; without it the data are taken in order.
        """
        check_int(epochs, "epochs", low=1)
        features = self._features(x, batch=None)
        labels = self._labels(y, batch=features.shape[0])
        rate = _check_rate(learning_rate)
        n = features.shape[0]
        if n == 0:
            raise ConfigError("no examples to train on")
        full = np.ones(self.batch_size, np.float32)
        epoch_losses: list[float] = []
        steps = 0
        # The rows were checked above: each step only gathers its batch (padded with
        # weight-0 rows at the end of an epoch) and runs the signature.
        for _ in range(epochs):
            order = rng.permutation(n) if rng is not None else np.arange(n)
            weighted_loss = 0.0
            for start in range(0, n, self.batch_size):
                index = order[start : start + self.batch_size]
                real = index.size
                pad = self.batch_size - real
                batch_x, batch_y, weights = features[index], labels[index], full
                if pad:
                    batch_x = np.concatenate(
                        [batch_x, np.zeros((pad, *self.input_shape), np.float32)]
                    )
                    batch_y = np.concatenate([batch_y, np.zeros(pad, labels.dtype)])
                    weights = np.concatenate([full[:real], np.zeros(pad, np.float32)])
                loss = self._step(batch_x, batch_y, weights, rate)
                weighted_loss += loss * real
                steps += 1
            epoch_losses.append(weighted_loss / n)
        return TrainResult(epoch_losses=tuple(epoch_losses), num_examples=n, num_steps=steps)

    def get_weights(self) -> dict[str, NDArray[np.float32]]:
        """Copies of the trainable tensors, keyed by name (sorted)."""
        values = self._runners["get_weights"]()
        return {name: np.array(values[name], dtype=np.float32) for name in self._weight_specs}

    def set_weights(self, weights: dict[str, NDArray[Any]]) -> None:
        """Assign every trainable tensor; names, shapes and float32 dtype must all match."""
        unknown = sorted(set(weights) - set(self._weight_specs))
        if unknown:
            raise UnknownTensorError(
                f"the model has no trainable tensors {unknown}; it has {list(self.weight_names)}",
                tensor=unknown[0],
            )
        missing = [name for name in self._weight_specs if name not in weights]
        if missing:
            raise MissingTensorError(
                f"set_weights needs every trainable tensor; missing {missing}", tensor=missing[0]
            )
        arrays: dict[str, NDArray[Any]] = {}
        for name, (shape, dtype) in self._weight_specs.items():
            value = np.asarray(weights[name])
            if value.dtype != dtype:
                raise DtypeMismatchError(
                    f"tensor {name!r} must be {dtype}, got {value.dtype}", tensor=name
                )
            if value.shape != shape:
                raise ShapeMismatchError(
                    f"tensor {name!r} must have shape {shape}, got {value.shape}", tensor=name
                )
            if not np.isfinite(value).all():
                raise NonFiniteError(f"tensor {name!r} holds NaN or infinite values", tensor=name)
            arrays[name] = np.ascontiguousarray(value)
        self._runners["set_weights"](**arrays)

    def _features(self, x: NDArray[Any], *, batch: int | None) -> NDArray[np.float32]:
        features = np.asarray(x, dtype=np.float32)
        if features.shape[1:] != self.input_shape or features.ndim != len(self.input_shape) + 1:
            raise ConfigError(
                f"x must have shape [n, {', '.join(map(str, self.input_shape))}], "
                f"got {features.shape}"
            )
        if batch is not None and features.shape[0] != batch:
            raise ConfigError(f"x must hold exactly {batch} examples, got {features.shape[0]}")
        return np.ascontiguousarray(features)

    def _labels(self, y: NDArray[Any], *, batch: int) -> NDArray[Any]:
        labels = np.asarray(y)
        if labels.shape != (batch,) or not np.issubdtype(labels.dtype, np.integer):
            raise ConfigError(
                f"y must be {batch} integer class ids, got shape {labels.shape} {labels.dtype}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ConfigError(
                f"labels must lie in [0, {self.num_classes}), got {labels.min()}..{labels.max()}"
            )
        return labels.astype(self._label_dtype)


def _check_rate(learning_rate: float) -> np.float32:
    rate = float(learning_rate)
    if not np.isfinite(rate) or rate < 0:
        raise ConfigError(f"learning_rate must be finite and >= 0, got {learning_rate!r}")
    return np.float32(rate)


class InferenceModel:
    """A plain TFLite model (full-integer int8 or float) mapping float inputs to float outputs.

    Quantized inputs are quantized with the input tensor's scale and zero point, quantized
    outputs dequantized with the output's, so callers always see float32.
    """

    def __init__(self, model: ModelSource, *, num_threads: int | None = None) -> None:
        self._interpreter = load_interpreter(model, num_threads=num_threads)
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConfigError(
                f"expected one input and one output, got {len(inputs)} and {len(outputs)}"
            )
        self._input = inputs[0]
        self._output = outputs[0]
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in self._input["shape"][1:])
        self.output_shape: tuple[int, ...] = tuple(int(d) for d in self._output["shape"][1:])
        self.input_dtype = np.dtype(self._input["dtype"])
        self.output_dtype = np.dtype(self._output["dtype"])
        self._batch = -1

    def logits(self, x: NDArray[Any]) -> NDArray[np.float32]:
        """The model's float32 outputs ``[n, ...]`` for a batch ``[n, *input_shape]``."""
        features = np.asarray(x, dtype=np.float32)
        if features.ndim != len(self.input_shape) + 1 or features.shape[1:] != self.input_shape:
            raise ConfigError(
                f"x must have shape [n, {', '.join(map(str, self.input_shape))}], "
                f"got {features.shape}"
            )
        n = features.shape[0]
        if n != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], [n, *self.input_shape])
            self._interpreter.allocate_tensors()
            self._batch = n
        self._interpreter.set_tensor(self._input["index"], quantize_input(features, self._input))
        self._interpreter.invoke()
        return dequantize_output(self._interpreter.get_tensor(self._output["index"]), self._output)

    def probabilities(self, x: NDArray[Any]) -> NDArray[np.float32]:
        """Softmax of :meth:`logits` (for models that output logits)."""
        logits = self.logits(x)
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probabilities: NDArray[np.float32] = shifted / shifted.sum(axis=-1, keepdims=True)
        return probabilities
