"""``training_record.json``: who trained an exported model, how, on which data, with what result.

The registry reads it to record provenance; the quantizer reads ``task``, ``seed`` and
``test_fraction`` from it to rebuild the same held-out split. No TensorFlow here.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any

from fedge.data import SCHEMA_FILE
from fedge.errors import ConfigError, DataError

__all__ = [
    "FEATURE_SPEC_FILE",
    "RECORD_FILE",
    "RECORD_FORMAT",
    "RECORD_VERSION",
    "SAVED_MODEL_DIR",
    "SCHEMA_FILE",
    "TrainingRecord",
    "load_training_record",
    "prepare_out_dir",
]

RECORD_FILE = "training_record.json"
# The other names of an export directory, here because this module imports no TensorFlow.
SAVED_MODEL_DIR = "saved_model"
FEATURE_SPEC_FILE = "feature_spec.json"
RECORD_FORMAT = "fedge.training_record"
RECORD_VERSION = 1


@dataclass(frozen=True)
class TrainingRecord:
    """Provenance and results of one training run (times are ISO-8601 UTC strings).

    ``metrics`` holds ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``
    and, for two-class tasks, ``test_auc`` (None when undefined). ``epochs`` is the number
    asked for; ``initial_epoch`` the first one this process ran (non-zero after resuming
    from a backup) and ``epochs_run`` how many it ran. ``batch_size`` is per replica;
    ``global_batch_size = batch_size * replicas``. ``training_job`` identifies the run for
    the registry's lineage; ``slice_metrics`` maps ``"<region column>=<value>"`` to the
    test metrics of that slice (tasks with a region column; small slices left out).
    """

    task: str
    model: str
    strategy: str
    replicas: int
    workers: int
    epochs: int
    initial_epoch: int
    epochs_run: int
    batch_size: int
    global_batch_size: int
    learning_rate: float
    seed: int
    test_fraction: float
    data_fraction: float
    data_fingerprint: str
    num_train_examples: int
    num_test_examples: int
    input_shape: tuple[int, ...]
    num_classes: int
    head_layers: tuple[str, ...]
    backbone_layers: tuple[str, ...]
    host: str
    user: str
    started_at: str
    finished_at: str
    tensorflow_version: str
    training_job: str = ""
    data_file: str = ""
    """A run on a user's file (task ``table``): its absolute path; empty for a bundled task."""
    data_sha256: str = ""
    """That file's sha256 (hex) when training started."""
    label_column: str = ""
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    slice_metrics: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    artifacts: Mapping[str, str] = field(default_factory=dict)
    format: str = RECORD_FORMAT
    version: int = RECORD_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "head_layers", tuple(self.head_layers))
        object.__setattr__(self, "backbone_layers", tuple(self.backbone_layers))
        metrics = {k: _finite_or_none(v) for k, v in self.metrics.items()}
        object.__setattr__(self, "metrics", MappingProxyType(metrics))
        slices = {
            str(name): MappingProxyType({k: _finite_or_none(v) for k, v in values.items()})
            for name, values in self.slice_metrics.items()
        }
        object.__setattr__(self, "slice_metrics", MappingProxyType(slices))
        object.__setattr__(self, "artifacts", MappingProxyType(dict(self.artifacts)))

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (tuples as lists, mappings as plain dicts)."""
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc["input_shape"] = list(self.input_shape)
        doc["head_layers"] = list(self.head_layers)
        doc["backbone_layers"] = list(self.backbone_layers)
        doc["metrics"] = dict(self.metrics)
        doc["slice_metrics"] = {k: dict(v) for k, v in self.slice_metrics.items()}
        doc["artifacts"] = dict(self.artifacts)
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingRecord:
        """Rebuild a record from :meth:`to_dict`'s document; DataError when it is not one."""
        if not isinstance(data, Mapping):
            raise DataError(f"not a training record: expected an object, got {type(data)}")
        if (data.get("format"), data.get("version")) != (RECORD_FORMAT, RECORD_VERSION):
            raise DataError(
                f"not a training record: expected format {RECORD_FORMAT!r} version "
                f"{RECORD_VERSION}, got {data.get('format')!r} version {data.get('version')!r}"
            )
        names = {f.name for f in fields(cls)}
        required = {
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        }
        missing = sorted(n for n in required if n not in data)
        if missing:
            raise DataError(f"not a training record: missing fields {missing}")
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except (TypeError, ValueError) as exc:
            raise DataError(f"not a training record: {exc}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)


def load_training_record(path: str | os.PathLike[str]) -> TrainingRecord:
    """Read ``training_record.json`` (``path`` is the file or the export directory)."""
    target = os.fspath(path)
    if os.path.isdir(target):
        target = os.path.join(target, RECORD_FILE)
    try:
        with open(target, encoding="utf-8") as stream:
            data = json.load(stream)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read a training record from {target}: {exc}") from exc
    return TrainingRecord.from_dict(data)


def prepare_out_dir(path: str | os.PathLike[str]) -> str:
    """Create ``path`` if needed and prove it writable; ConfigError naming the cause if not."""
    target = os.path.abspath(os.fspath(path))
    probe = os.path.join(target, f".write-test-{os.getpid()}")
    try:
        os.makedirs(target, exist_ok=True)
        with open(probe, "w", encoding="utf-8") as stream:
            stream.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(f"cannot write to {target}: {exc.strerror or exc}") from exc
    return target


def _finite_or_none(value: object) -> float | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None
