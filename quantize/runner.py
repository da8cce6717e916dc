"""Run a converted model the way a device would, to measure it: float in, float logits out.

The interpreter comes from ``tflite_runtime`` (then ``ai_edge_litert``, then ``tf.lite``), the
runtime devices use, so accuracy and latency are those of the edge kernels and not of
TensorFlow. int8 inputs are quantized with the input tensor's scale and zero point and int8
outputs dequantized with :mod:`fedge.quantization`, the arithmetic
``edge_client.runtime.InferenceModel`` uses on the device.
"""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedge.errors import ConfigError
from fedge.quantization import dequantize_output, quantize_input

__all__ = ["Latency", "TFLiteRunner", "load_interpreter", "measure_latency", "runtime_name"]

_RUNTIMES = ("tflite_runtime.interpreter", "ai_edge_litert.interpreter")
_BATCH = 256


def _interpreter_class() -> tuple[str, Any]:
    for name in _RUNTIMES:
        try:
            return name.split(".", 1)[0], importlib.import_module(name).Interpreter
        except ImportError:
            continue
    import tensorflow as tf

    return "tf.lite", tf.lite.Interpreter


def load_interpreter(flatbuffer: bytes, *, num_threads: int | None = 1) -> Any:
    """An interpreter for ``flatbuffer`` from the first runtime found; ConfigError if it fails."""
    _, interpreter_class = _interpreter_class()
    try:
        return interpreter_class(model_content=bytes(flatbuffer), num_threads=num_threads)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"the TFLite runtime cannot load the model: {exc}") from exc


def runtime_name() -> str:
    """The runtime :class:`TFLiteRunner` uses here: tflite_runtime, ai_edge_litert or tf.lite."""
    return _interpreter_class()[0]


@dataclass(frozen=True)
class Latency:
    """Microseconds per example: ``single`` is the median of one-example calls (what a device
    answering one request sees), ``batched`` the mean per example over batches of ``batch``.

    Float in, float out: for an int8 model the times include quantizing the input and
    dequantizing the output in numpy, as a caller on the device pays them.
    """

    single_us: float
    batched_us: float
    batch: int
    timed_examples: int
    num_threads: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "single_us": self.single_us,
            "batched_us": self.batched_us,
            "batch": self.batch,
            "timed_examples": self.timed_examples,
            "num_threads": self.num_threads,
        }


class TFLiteRunner:
    """One-input, one-output TFLite model: :meth:`logits` maps float inputs to float outputs."""

    def __init__(self, flatbuffer: bytes, *, num_threads: int | None = 1) -> None:
        self.runtime = runtime_name()
        self._interpreter = load_interpreter(flatbuffer, num_threads=num_threads)
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConfigError(
                f"expected one input and one output, got {len(inputs)} and {len(outputs)}"
            )
        self._input, self._output = inputs[0], outputs[0]
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in self._input["shape"][1:])
        self.input_dtype = np.dtype(self._input["dtype"])
        self.output_dtype = np.dtype(self._output["dtype"])
        self.num_threads = num_threads
        self._batch = -1

    def _resize(self, n: int) -> None:
        if n != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], [n, *self.input_shape])
            self._interpreter.allocate_tensors()
            self._batch = n

    def run_batch(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Outputs of one call on ``x`` (``[n, *input_shape]``, float32), dequantized."""
        self._resize(x.shape[0])
        self._interpreter.set_tensor(self._input["index"], quantize_input(x, self._input))
        self._interpreter.invoke()
        return dequantize_output(self._interpreter.get_tensor(self._output["index"]), self._output)

    def logits(self, x: NDArray[Any], *, batch: int = _BATCH) -> NDArray[np.float32]:
        """Outputs for every row of ``x``, computed in batches of ``batch``."""
        features = np.asarray(x, dtype=np.float32)
        if features.shape[1:] != self.input_shape:
            raise ConfigError(
                f"x must have shape [n, {', '.join(map(str, self.input_shape))}], "
                f"got {features.shape}"
            )
        parts = [self.run_batch(features[i : i + batch]) for i in range(0, len(features), batch)]
        return np.concatenate(parts).astype(np.float32)

    def latency(self, x: NDArray[Any], *, examples: int = 200, batch: int = _BATCH) -> Latency:
        """Per-example time of one-example calls over the first ``examples`` rows, and of
        batched calls over all of ``x``."""
        features = np.asarray(x, dtype=np.float32)
        return measure_latency(
            self.run_batch, features, examples=examples, batch=batch, num_threads=self.num_threads
        )


def measure_latency(
    predict: Callable[[NDArray[np.float32]], Any],
    x: NDArray[np.float32],
    *,
    examples: int = 200,
    batch: int = _BATCH,
    num_threads: int | None = None,
) -> Latency:
    """Time ``predict`` one example at a time (median, after a warm-up) and in batches.

    Any predictor works (a TFLite runner, a Keras call), so every variant of a benchmark is
    timed the same way on the same inputs.
    """
    if len(x) == 0:
        raise ConfigError("cannot time a model on zero examples")
    timed = x[: max(1, examples)]
    for row in timed[:5]:
        predict(row[None])
    singles = []
    for row in timed:
        start = time.perf_counter_ns()
        predict(row[None])
        singles.append(time.perf_counter_ns() - start)
    predict(x[:batch])
    start = time.perf_counter_ns()
    for i in range(0, len(x), batch):
        predict(x[i : i + batch])
    batched = (time.perf_counter_ns() - start) / len(x)
    return Latency(
        single_us=statistics.median(singles) / 1e3,
        batched_us=batched / 1e3,
        batch=batch,
        timed_examples=len(timed),
        num_threads=num_threads,
    )
