"""What the quantizer reads: the exported model, its held-out data, representative samples.

:func:`resolve_model` and :func:`load_task_arrays` import no TensorFlow, so a command can
refuse a bad path or a wrong-shape sample in a fraction of a second; :func:`load_keras_model`
is the only TensorFlow entry. The held-out split is rebuilt from ``training_record.json``
(task, seed, test_fraction, data_fraction) exactly as ``cloud_trainer`` made it (for a
``fedge-train --data`` model, from the recorded file read against the export's
``schema.json``), and transformed with the exported feature spec, the one the model was
trained with.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from cloud_trainer.config import DEFAULT_TEST_FRACTION
from cloud_trainer.data import build_feature_spec, split_task
from cloud_trainer.record import (
    FEATURE_SPEC_FILE,
    RECORD_FILE,
    SAVED_MODEL_DIR,
    TrainingRecord,
    load_training_record,
)
from fedge.data import Dataset, load_task
from fedge.data.user_table import SCHEMA_FILE, load_schema_json, read_table
from fedge.errors import ConfigError, DataError, FeatureError
from fedge.features import FeatureSpec
from fedge.schema import Schema

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "DEFAULT_REPRESENTATIVE",
    "HeldOut",
    "ModelSource",
    "TaskArrays",
    "check_input_shape",
    "load_keras_model",
    "load_representative_file",
    "load_task_arrays",
    "representative_sample",
    "resolve_model",
]

logger = logging.getLogger(__name__)

DEFAULT_REPRESENTATIVE = 200
_SAVED_MODEL_PB = "saved_model.pb"


@dataclass(frozen=True)
class ModelSource:
    """Where a model lives: its SavedModel directory and, when it came from ``fedge-train``,
    the export directory with the training record and feature spec."""

    saved_model_dir: Path
    export_dir: Path | None
    record: TrainingRecord | None
    feature_spec_path: Path | None


@dataclass(frozen=True)
class HeldOut:
    """How the held-out data were rebuilt, for reports and lineage."""

    task: str
    seed: int
    test_fraction: float
    data_fraction: float
    num_train_examples: int
    num_test_examples: int
    data_fingerprint: str
    fingerprint_matches_record: bool | None
    """False when the data on disk differ from what the record says trained the model."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "data_fraction": self.data_fraction,
            "num_train_examples": self.num_train_examples,
            "num_test_examples": self.num_test_examples,
            "data_fingerprint": self.data_fingerprint,
            "fingerprint_matches_record": self.fingerprint_matches_record,
        }


@dataclass(frozen=True, eq=False)
class TaskArrays:
    """Model-ready training and held-out arrays of a task, with the spec and schema used."""

    held_out: HeldOut
    spec: FeatureSpec
    schema: Schema
    num_classes: int
    x_train: NDArray[np.float32]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]
    label_names: tuple[str, ...] | None = None
    """The class texts of a model trained on a user's table (``schema.json``); None for a
    bundled task, whose labels are class ids."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])


def resolve_model(path: str | os.PathLike[str]) -> ModelSource:
    """The model at ``path``: an export directory (``saved_model/`` inside) or a SavedModel
    directory (``saved_model.pb`` inside; its parent is searched for the record and spec).

    ConfigError for a missing path, a file, or a directory that holds no SavedModel.
    """
    root = Path(path)
    if not root.exists():
        raise ConfigError(f"no such model: {os.fspath(path)!r} does not exist")
    if not root.is_dir():
        raise ConfigError(
            f"{os.fspath(path)!r} is a file, not a model: give an export directory "
            f"(with {SAVED_MODEL_DIR}/) or a SavedModel directory (with {_SAVED_MODEL_PB})"
        )
    export: Path | None
    if (root / SAVED_MODEL_DIR / _SAVED_MODEL_PB).is_file():
        saved, export = root / SAVED_MODEL_DIR, root
    elif (root / _SAVED_MODEL_PB).is_file():
        saved = root
        parent = root.resolve().parent
        export = parent if (parent / RECORD_FILE).is_file() else None
    else:
        raise ConfigError(
            f"{os.fspath(path)!r} is not a model: it holds neither {SAVED_MODEL_DIR}/"
            f"{_SAVED_MODEL_PB} (an export directory) nor {_SAVED_MODEL_PB} (a SavedModel)"
        )
    record = None
    spec_path = None
    if export is not None:
        if (export / RECORD_FILE).is_file():
            record = load_training_record(export)
        if (export / FEATURE_SPEC_FILE).is_file():
            spec_path = export / FEATURE_SPEC_FILE
    return ModelSource(
        saved_model_dir=saved, export_dir=export, record=record, feature_spec_path=spec_path
    )


def load_task_arrays(
    source: ModelSource,
    *,
    task: str | None = None,
    seed: int | None = None,
    test_fraction: float | None = None,
) -> TaskArrays:
    """Rebuild the training and held-out arrays the model at ``source`` was trained on.

    With a training record the split comes from it and ``task``/``seed``/``test_fraction``
    must be None; without one (a bare SavedModel) ``task`` is required and the split uses
    ``seed`` (0) and ``test_fraction`` (0.2).
    """
    record = source.record
    if record is not None:
        given = [
            name
            for name, value in (("task", task), ("seed", seed), ("test_fraction", test_fraction))
            if value is not None
        ]
        if given:
            raise ConfigError(
                f"the model has a training record ({RECORD_FILE}) that fixes the task and the "
                f"split; do not also give {', '.join(given)}"
            )
        task, seed, test_fraction = record.task, record.seed, record.test_fraction
        data_fraction = record.data_fraction
    else:
        if task is None:
            raise ConfigError(
                f"{source.saved_model_dir} has no {RECORD_FILE} beside it: name the task "
                "whose held-out data to evaluate on"
            )
        seed = 0 if seed is None else seed
        test_fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        data_fraction = 1.0
    label_names: tuple[str, ...] | None = None
    data_file = "" if record is None else record.data_file
    if data_file:
        dataset, label_names = _user_table(source, record, data_file)
    else:
        dataset = load_task(task)
    train, test = split_task(
        dataset, test_fraction=test_fraction, seed=seed, data_fraction=data_fraction
    )
    spec = _read_spec(source.feature_spec_path) if source.feature_spec_path else None
    if spec is None:
        spec = build_feature_spec(train)
    fingerprint = train.fingerprint()
    matches = None if record is None else fingerprint == record.data_fingerprint
    if matches is False:
        logger.warning(
            "the %s training data differ from the record's (fingerprint %s, record %s): "
            "held-out figures may not compare with the training run",
            task,
            fingerprint[:12],
            record.data_fingerprint[:12] if record else "",
        )
    try:
        x_train, x_test = spec.transform(train.columns), spec.transform(test.columns)
    except FeatureError as exc:
        raise DataError(f"the feature spec does not fit the {task} data: {exc}") from exc
    return TaskArrays(
        held_out=HeldOut(
            task=task,
            seed=seed,
            test_fraction=test_fraction,
            data_fraction=data_fraction,
            num_train_examples=len(train),
            num_test_examples=len(test),
            data_fingerprint=fingerprint,
            fingerprint_matches_record=matches,
        ),
        spec=spec,
        schema=dataset.schema,
        num_classes=dataset.schema.num_classes,
        x_train=x_train,
        y_train=np.asarray(train.labels, dtype=np.int64),
        x_test=x_test,
        y_test=np.asarray(test.labels, dtype=np.int64),
        label_names=label_names,
    )


def _user_table(
    source: ModelSource, record: TrainingRecord | None, data_file: str
) -> tuple[Dataset, tuple[str, ...]]:
    """The table a ``fedge-train --data`` model was trained on, read against the export's
    ``schema.json`` (the same rows and classes as in training)."""
    assert record is not None
    assert source.export_dir is not None
    schema_path = source.export_dir / SCHEMA_FILE
    if not schema_path.is_file():
        raise DataError(
            f"{source.export_dir} was trained on {data_file} but holds no {SCHEMA_FILE}"
        )
    schema, names = load_schema_json(schema_path)
    if not os.path.isfile(data_file):
        raise DataError(
            f"the model was trained on {data_file}, which is gone: the held-out rows cannot "
            "be rebuilt"
        )
    digest = hashlib.sha256()
    with open(data_file, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    if record.data_sha256 and digest.hexdigest() != record.data_sha256:
        logger.warning(
            "%s changed since training (sha256 %s, record %s): held-out figures may not "
            "compare with the training run",
            data_file,
            digest.hexdigest()[:12],
            record.data_sha256[:12],
        )
    return read_table(data_file, schema, names), names


def representative_sample(
    arrays: TaskArrays, count: int, *, seed: int | None = None
) -> NDArray[np.float32]:
    """``count`` training examples drawn without replacement (all of them if fewer exist),
    seeded by ``seed`` (the split's seed by default) so a rerun calibrates identically."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"the representative sample size must be an int >= 1, got {count!r}")
    n = arrays.x_train.shape[0]
    if count >= n:
        return arrays.x_train
    rng = np.random.default_rng(arrays.held_out.seed if seed is None else seed)
    return arrays.x_train[np.sort(rng.choice(n, size=count, replace=False))]


def load_representative_file(path: str | os.PathLike[str]) -> NDArray[np.float32]:
    """A ``.npy`` array of model-ready (already transformed) float inputs ``[n, *shape]``."""
    target = os.fspath(path)
    try:
        array = np.load(target, allow_pickle=False)
    except FileNotFoundError:
        raise ConfigError(f"no representative data file {target!r}") from None
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError(f"{target!r} is not a .npy array: {exc}") from exc
    if not isinstance(array, np.ndarray):  # np.load of an .npz archive
        raise ConfigError(f"{target!r} holds several arrays; give one .npy array")
    if array.dtype.kind not in "iuf":
        raise ConfigError(f"representative data in {target!r} must be real numbers: {array.dtype}")
    return array.astype(np.float32)


def check_input_shape(
    sample: NDArray[Any], input_shape: tuple[int, ...], *, what: str
) -> NDArray[np.float32]:
    """``sample`` as float32 if it is a finite, non-empty ``[n, *input_shape]`` array."""
    if sample.ndim != len(input_shape) + 1 or tuple(sample.shape[1:]) != tuple(input_shape):
        shown = ", ".join(["n", *map(str, input_shape)])
        raise ConfigError(
            f"{what} must have shape [{shown}] to match the model input; got {tuple(sample.shape)}"
        )
    if sample.shape[0] == 0:
        raise ConfigError(f"{what} is empty; give at least one example")
    if not np.isfinite(sample).all():
        raise ConfigError(f"{what} holds NaN or infinite values")
    return sample.astype(np.float32, copy=False)


def load_keras_model(source: ModelSource, *, input_shape: tuple[int, ...]) -> tf.keras.Model:
    """The Keras model at ``source`` (logits); ConfigError if it is none or its input shape
    is not ``input_shape`` (the feature transform's output)."""
    import tensorflow as tf

    try:
        model = tf.keras.models.load_model(source.saved_model_dir, compile=False)
    except Exception as exc:  # a corrupt SavedModel raises anything from OSError to DecodeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot load a Keras model from {source.saved_model_dir}: {first}"
        ) from exc
    if not isinstance(model, tf.keras.Model):
        raise ConfigError(
            f"{source.saved_model_dir} is a SavedModel but not a Keras model "
            f"(loaded a {type(model).__name__})"
        )
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1:
        raise ConfigError(f"the model must have one input, it has {len(inputs)}")
    model_shape = tuple(inputs[0].shape[1:])
    if model_shape != tuple(input_shape):
        raise ConfigError(
            f"the model takes inputs of shape {model_shape} but the feature spec gives "
            f"{tuple(input_shape)}"
        )
    return model


def _read_spec(path: Path) -> FeatureSpec:
    try:
        return FeatureSpec.from_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read the feature spec {path}: {exc}") from exc
