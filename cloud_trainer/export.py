"""The export directory a training run leaves behind, and readers for it.

::

    OUT/
    ├── saved_model/           Keras SavedModel (logits); loads with no custom objects
    ├── feature_spec.json      FeatureSpec.to_json() of the training split
    ├── schema.json            a run on a user's file only: its schema and label names
    ├── ablation.json          fedge-train --ablation only: the leave-one-feature-out report
    ├── training_record.json   TrainingRecord, written last: its presence marks a complete export
    ├── checkpoints/           per-epoch weights (chief only)
    ├── logs/                  TensorBoard event files (chief only)
    └── backup/                BackupAndRestore state while a run is unfinished

Every worker calls :func:`write_export` (saving may run collective ops); non-chief workers
save into a temporary directory that is removed, and write no JSON.
"""

from __future__ import annotations

import logging
import os
import shutil

import tensorflow as tf

from cloud_trainer.cluster import ClusterRole, remove_worker_temp, write_filepath
from cloud_trainer.record import (
    FEATURE_SPEC_FILE,
    RECORD_FILE,
    SAVED_MODEL_DIR,
    SCHEMA_FILE,
    TrainingRecord,
)
from fedge.data import save_schema_json
from fedge.errors import DataError
from fedge.features import FeatureSpec
from fedge.fileio import atomic_write_text, publish_directory
from fedge.schema import Schema

__all__ = [
    "BACKUP_DIR",
    "CHECKPOINT_DIR",
    "FEATURE_SPEC_FILE",
    "LOG_DIR",
    "SAVED_MODEL_DIR",
    "SCHEMA_FILE",
    "load_exported_model",
    "load_feature_spec",
    "write_export",
]

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
BACKUP_DIR = "backup"


def write_export(
    out_dir: str | os.PathLike[str],
    *,
    model: tf.keras.Model,
    spec: FeatureSpec,
    record: TrainingRecord,
    role: ClusterRole,
    table: tuple[Schema, tuple[str, ...]] | None = None,
) -> None:
    """Save ``model``, then (chief only) the feature spec, ``table``'s schema and label names
    as ``schema.json`` if given, then the training record."""
    out = os.fspath(out_dir)
    os.makedirs(out, exist_ok=True)
    final = os.path.join(out, SAVED_MODEL_DIR)
    # The chief saves beside the old export and swaps, so a crash never leaves half a model.
    staging = write_filepath(os.path.join(out, f".{SAVED_MODEL_DIR}.partial"), role)
    shutil.rmtree(staging, ignore_errors=True)
    model.save(staging)
    if not role.is_chief:
        remove_worker_temp(staging, role)
        return
    shutil.rmtree(final, ignore_errors=True)
    publish_directory(staging, final)
    atomic_write_text(os.path.join(out, FEATURE_SPEC_FILE), spec.to_json() + "\n")
    if table is not None:
        save_schema_json(os.path.join(out, SCHEMA_FILE), *table)
    atomic_write_text(os.path.join(out, RECORD_FILE), record.to_json() + "\n")
    logger.info(
        "exported %s, %s and %s to %s", SAVED_MODEL_DIR, FEATURE_SPEC_FILE, RECORD_FILE, out
    )


def load_exported_model(out_dir: str | os.PathLike[str]) -> tf.keras.Model:
    """The exported Keras model (logits), loaded with no custom objects."""
    path = os.path.join(os.fspath(out_dir), SAVED_MODEL_DIR)
    if not os.path.isdir(path):
        raise DataError(f"no SavedModel at {path}")
    return tf.keras.models.load_model(path)


def load_feature_spec(out_dir: str | os.PathLike[str]) -> FeatureSpec:
    """The exported feature spec."""
    path = os.path.join(os.fspath(out_dir), FEATURE_SPEC_FILE)
    try:
        with open(path, encoding="utf-8") as stream:
            return FeatureSpec.from_json(stream.read())
    except OSError as exc:
        raise DataError(f"cannot read the feature spec {path}: {exc}") from exc
