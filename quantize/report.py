"""Convert a Keras model in one mode and measure what it costs: size, ops, latency, accuracy.

:func:`quantize_model` returns the flatbuffer and a :class:`QuantizeReport`: bytes and the
ratio to a float32 conversion of the same model, the operator list, the per-example latency
in the TFLite runtime, and accuracy (AUC for two classes) of the converted model next to the
Keras model's on the same held-out examples, with how often their argmax agree. AUC is the
rank statistic of ``cloud_trainer.evaluation.binary_auc``, the one the trainer reports, so
the two figures compare.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from cloud_trainer.evaluation import logit_metrics
from fedge.errors import ConfigError
from quantize.errors import ConversionError
from quantize.inputs import HeldOut, TaskArrays
from quantize.runner import Latency, TFLiteRunner

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "REPORT_FILE",
    "REPORT_FORMAT",
    "Agreement",
    "Metrics",
    "QuantizeReport",
    "Representative",
    "compare_logits",
    "convert_checked",
    "keras_logits",
    "quantize_model",
]

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"
REPORT_FORMAT = "fedge.quantize_report"
REPORT_VERSION = 1

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Metrics:
    """Held-out figures of one model: accuracy, mean cross-entropy, AUC (two classes only)."""

    accuracy: float
    loss: float
    auc: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "loss": self.loss, "auc": self.auc}


@dataclass(frozen=True)
class Agreement:
    """A converted model against its Keras reference on the same inputs."""

    reference: Metrics
    converted: Metrics
    argmax_agreement: float
    max_abs_logit_diff: float

    @property
    def accuracy_drop(self) -> float:
        """Reference accuracy minus converted accuracy (a fraction; 0.01 is one point)."""
        return self.reference.accuracy - self.converted.accuracy

    @property
    def auc_drop(self) -> float | None:
        if self.reference.auc is None or self.converted.auc is None:
            return None
        return self.reference.auc - self.converted.auc


@dataclass(frozen=True)
class Representative:
    """The calibration sample of an int8 conversion."""

    examples: int
    source: str
    """``"training split"`` or the path of a ``.npy`` file."""

    def to_dict(self) -> dict[str, Any]:
        return {"examples": self.examples, "source": self.source}


@dataclass(frozen=True)
class QuantizeReport:
    """What ``report.json`` says about one conversion (see the module docstring)."""

    model: str
    task: str
    mode: str
    file: str
    bytes: int
    float32_bytes: int
    ops: tuple[str, ...]
    input_dtype: str
    output_dtype: str
    runtime: str
    latency: Latency
    agreement: Agreement
    held_out: HeldOut
    representative: Representative | None
    tensorflow_version: str
    created_at: str

    @property
    def ratio_to_float32(self) -> float:
        return self.bytes / self.float32_bytes

    def to_dict(self) -> dict[str, Any]:
        agreement = self.agreement
        sample = self.representative
        return {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "model": self.model,
            "task": self.task,
            "mode": self.mode,
            "file": self.file,
            "bytes": self.bytes,
            "float32_bytes": self.float32_bytes,
            "ratio_to_float32": self.ratio_to_float32,
            "ops": list(self.ops),
            "input_dtype": self.input_dtype,
            "output_dtype": self.output_dtype,
            "runtime": self.runtime,
            "latency_us_per_example": self.latency.to_dict(),
            "keras": agreement.reference.to_dict(),
            "tflite": agreement.converted.to_dict(),
            "argmax_agreement": agreement.argmax_agreement,
            "max_abs_logit_diff": agreement.max_abs_logit_diff,
            "accuracy_drop": agreement.accuracy_drop,
            "auc_drop": agreement.auc_drop,
            "held_out": self.held_out.to_dict(),
            "representative": None if sample is None else sample.to_dict(),
            "tensorflow_version": self.tensorflow_version,
            "created_at": self.created_at,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    def summary(self) -> str:
        """One line: size, ratio, accuracy against Keras, agreement, latency."""
        agreement = self.agreement
        auc = ""
        if agreement.converted.auc is not None and agreement.reference.auc is not None:
            auc = f", AUC {agreement.converted.auc:.4f} (keras {agreement.reference.auc:.4f})"
        return (
            f"{self.task} {self.mode}: {self.bytes:,} bytes ({self.ratio_to_float32:.3f}x "
            f"float32), accuracy {agreement.converted.accuracy:.4f} (keras "
            f"{agreement.reference.accuracy:.4f}){auc}, agreement "
            f"{agreement.argmax_agreement:.4f}, {self.latency.single_us:.1f} us/example"
        )


def keras_logits(
    model: tf.keras.Model, x: NDArray[np.float32], *, batch: int = 1024
) -> NDArray[np.float32]:
    """The Keras model's outputs for ``x`` (direct calls in inference mode, in batches)."""
    parts = [np.asarray(model(x[i : i + batch], training=False)) for i in range(0, len(x), batch)]
    logits: NDArray[np.float32] = np.concatenate(parts).astype(np.float32)
    return logits


def compare_logits(
    reference: NDArray[Any], converted: NDArray[Any], labels: NDArray[Any]
) -> Agreement:
    """Metrics of both logit sets against ``labels``, their argmax agreement and max gap."""
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(converted, dtype=np.float64)
    if ref.shape != got.shape:
        raise ConfigError(f"logits of shape {ref.shape} and {got.shape} cannot be compared")
    return Agreement(
        reference=_metrics(ref, labels),
        converted=_metrics(got, labels),
        argmax_agreement=float((ref.argmax(axis=1) == got.argmax(axis=1)).mean()),
        max_abs_logit_diff=float(np.abs(ref - got).max()),
    )


def _metrics(logits: NDArray[np.float64], labels: NDArray[Any]) -> Metrics:
    values = logit_metrics(logits, labels)
    auc = values.get("auc")
    return Metrics(
        accuracy=values["accuracy"],
        loss=values["loss"],
        auc=None if auc is None or not np.isfinite(auc) else float(auc),
    )


def convert_checked(
    model: tf.keras.Model, *, mode: str, representative: NDArray[np.float32] | None = None
) -> bytes:
    """``quantize.convert.convert`` with a converter failure reported as ConversionError.

    Callers check the inputs first (mode, sample shape), so a ConfigError raised here is the
    converter's refusal, not a usage error.
    """
    from quantize.convert import convert

    try:
        return convert(model, mode=mode, representative=representative)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise ConversionError(str(exc)) from exc


def quantize_model(
    model: tf.keras.Model,
    arrays: TaskArrays,
    *,
    mode: str,
    model_path: str,
    created_at: str,
    representative: NDArray[np.float32] | None = None,
    representative_source: str = "training split",
    file_name: str = "model.tflite",
    latency_examples: int = 200,
    progress: Progress | None = None,
) -> tuple[bytes, QuantizeReport]:
    """Convert ``model`` in ``mode`` and measure it on ``arrays``' held-out split."""
    import tensorflow as tf

    from quantize.convert import op_list

    step = progress or (lambda _: None)
    step(f"converting to {mode}")
    flatbuffer = convert_checked(model, mode=mode, representative=representative)
    if mode == "float32":
        float32_bytes = len(flatbuffer)
    else:
        step("converting to float32 for the size ratio")
        float32_bytes = len(convert_checked(model, mode="float32"))
    step("evaluating on the held-out split")
    reference = keras_logits(model, arrays.x_test)
    try:
        runner = TFLiteRunner(flatbuffer)
        converted = runner.logits(arrays.x_test)
    except (ConfigError, ValueError, RuntimeError) as exc:
        raise ConversionError(f"the {mode} model fails in the TFLite runtime: {exc}") from exc
    agreement = compare_logits(reference, converted, arrays.y_test)
    step("timing in the TFLite runtime")
    latency = runner.latency(arrays.x_test, examples=latency_examples)
    report = QuantizeReport(
        model=model_path,
        task=arrays.held_out.task,
        mode=mode,
        file=file_name,
        bytes=len(flatbuffer),
        float32_bytes=float32_bytes,
        ops=tuple(op_list(flatbuffer)),
        input_dtype=runner.input_dtype.name,
        output_dtype=runner.output_dtype.name,
        runtime=runner.runtime,
        latency=latency,
        agreement=agreement,
        held_out=arrays.held_out,
        representative=(
            None
            if representative is None
            else Representative(examples=len(representative), source=representative_source)
        ),
        tensorflow_version=tf.__version__,
        created_at=created_at,
    )
    logger.info("%s", report.summary())
    return flatbuffer, report
