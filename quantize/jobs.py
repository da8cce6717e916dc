"""The two jobs behind ``fedge-quantize``, as plain functions that return data.

Each job checks everything it can without TensorFlow first (the model path, ``--out``, the
held-out data, the shape of a representative file), so bad input fails in well under a
second; then loads the model, converts, measures, and writes into a staging directory that
becomes ``out`` only when everything succeeded (:mod:`quantize.outdir`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedge.errors import ConfigError
from quantize.bundle import BundleResult, check_version, derive_version, write_bundle
from quantize.inputs import (
    DEFAULT_REPRESENTATIVE,
    ModelSource,
    TaskArrays,
    check_input_shape,
    load_keras_model,
    load_representative_file,
    load_task_arrays,
    representative_sample,
    resolve_model,
)
from quantize.outdir import check_out_dir, staged_out_dir
from quantize.report import REPORT_FILE, QuantizeReport, quantize_model

__all__ = [
    "MODES",
    "BundleOutcome",
    "HeldOutOptions",
    "QuantizeOutcome",
    "bundle_export",
    "quantize_export",
]

logger = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("float32", "dynamic", "float16", "int8")
MODEL_FILE = "model.tflite"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class HeldOutOptions:
    """The split to rebuild for a SavedModel that has no training record beside it."""

    task: str | None = None
    seed: int | None = None
    test_fraction: float | None = None


@dataclass(frozen=True)
class QuantizeOutcome:
    out_dir: str
    tflite_path: str
    report: QuantizeReport

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "tflite": self.tflite_path,
            "report": self.report.to_dict(),
        }

    def summary(self) -> str:
        return f"{self.report.summary()} -> {self.tflite_path}"


@dataclass(frozen=True)
class BundleOutcome:
    out_dir: str
    result: BundleResult

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, **self.result.to_dict()}

    def summary(self) -> str:
        return f"{self.result.summary()} -> {self.out_dir}"


@dataclass(frozen=True, eq=False)
class _Prepared:
    source: ModelSource
    arrays: TaskArrays
    representative: NDArray[np.float32] | None
    representative_source: str


def _prepare(
    model_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    held_out: HeldOutOptions,
    representative: int | None,
    representative_file: str | os.PathLike[str] | None,
    wants_sample: bool,
    progress: Progress,
) -> _Prepared:
    """Every check that needs no TensorFlow, in the order a user would fix them."""
    source = resolve_model(model_path)
    check_out_dir(out)
    if representative is not None and representative_file is not None:
        raise ConfigError("give either a representative count or a representative file, not both")
    if not wants_sample and (representative is not None or representative_file is not None):
        raise ConfigError("representative data is only used by mode int8")
    if representative is not None and (
        isinstance(representative, bool)
        or not isinstance(representative, int)
        or representative < 1
    ):
        raise ConfigError(f"the representative count must be >= 1, got {representative!r}")
    file_sample = None
    if representative_file is not None:
        file_sample = load_representative_file(representative_file)
    progress("rebuilding the training and held-out data")
    arrays = load_task_arrays(
        source, task=held_out.task, seed=held_out.seed, test_fraction=held_out.test_fraction
    )
    sample: NDArray[np.float32] | None = None
    origin = ""
    if file_sample is not None:
        origin = os.path.abspath(os.fspath(representative_file or ""))
        sample = check_input_shape(
            file_sample, arrays.input_shape, what=f"the representative data in {origin}"
        )
    elif wants_sample:
        sample = representative_sample(arrays, representative or DEFAULT_REPRESENTATIVE)
        origin = "training split"
    return _Prepared(
        source=source, arrays=arrays, representative=sample, representative_source=origin
    )


def quantize_export(
    model_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mode: str,
    representative: int | None = None,
    representative_file: str | os.PathLike[str] | None = None,
    held_out: HeldOutOptions | None = None,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> QuantizeOutcome:
    """Convert the model at ``model_path`` in ``mode``; write ``model.tflite`` and
    ``report.json`` into the new directory ``out``."""
    step = progress or (lambda _: None)
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    prepared = _prepare(
        model_path,
        out,
        held_out=held_out or HeldOutOptions(),
        representative=representative,
        representative_file=representative_file,
        wants_sample=mode == "int8",
        progress=step,
    )
    step("loading the Keras model")
    model = load_keras_model(prepared.source, input_shape=prepared.arrays.input_shape)
    created_at = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    with staged_out_dir(out) as staging:
        flatbuffer, report = quantize_model(
            model,
            prepared.arrays,
            mode=mode,
            model_path=str(prepared.source.saved_model_dir.resolve()),
            created_at=created_at,
            representative=prepared.representative,
            representative_source=prepared.representative_source,
            file_name=MODEL_FILE,
            progress=step,
        )
        (staging / MODEL_FILE).write_bytes(flatbuffer)
        (staging / REPORT_FILE).write_text(report.to_json(), encoding="utf-8")
    out_dir = os.path.abspath(os.fspath(out))
    return QuantizeOutcome(
        out_dir=out_dir, tflite_path=os.path.join(out_dir, MODEL_FILE), report=report
    )


def bundle_export(
    model_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    batch_size: int = 32,
    representative: int | None = None,
    representative_file: str | os.PathLike[str] | None = None,
    version: str | None = None,
    held_out: HeldOutOptions | None = None,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> BundleOutcome:
    """Build the edge bundle of the model at ``model_path`` in the new directory ``out``."""
    step = progress or (lambda _: None)
    if version is not None:
        check_version(version)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"the train batch size must be >= 1, got {batch_size!r}")
    prepared = _prepare(
        model_path,
        out,
        held_out=held_out or HeldOutOptions(),
        representative=representative,
        representative_file=representative_file,
        wants_sample=True,
        progress=step,
    )
    assert prepared.representative is not None
    arrays = prepared.arrays
    moment = now or datetime.now(UTC)
    record = prepared.source.record
    if version is None:
        version = derive_version(
            task=arrays.held_out.task,
            data_fingerprint=arrays.held_out.data_fingerprint,
            record=record,
            now=moment,
        )
    step("loading the Keras model")
    model = load_keras_model(prepared.source, input_shape=arrays.input_shape)
    with staged_out_dir(out) as staging:
        result = write_bundle(
            model,
            arrays,
            staging,
            representative=prepared.representative,
            batch_size=batch_size,
            version=version,
            created_at=moment.isoformat(timespec="seconds"),
            training_record=None if record is None else record.to_dict(),
            extra_metadata={
                "source_model": str(prepared.source.saved_model_dir.resolve()),
                "held_out": arrays.held_out.to_dict(),
                "representative": {
                    "examples": len(prepared.representative),
                    "source": prepared.representative_source,
                },
            },
            progress=step,
        )
    return BundleOutcome(out_dir=os.path.abspath(os.fspath(out)), result=result)
