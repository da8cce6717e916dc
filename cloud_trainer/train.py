"""Train a zoo model under a tf.distribute strategy, fault-tolerantly, and export it.

:func:`train` is the whole job: strategy first (before any TensorFlow op), data, model
built and compiled inside ``strategy.scope()``, ``fit`` with BackupAndRestore (a restarted
run resumes after the last completed epoch), chief-only checkpoints and TensorBoard logs,
then metrics and the export (see :mod:`cloud_trainer.export`).

Under ``parameter-server`` this runs on the chief (the coordinator): each worker builds its
own repeated, shuffled input from a dataset function, and an epoch is a fixed number of
steps (one pass over the training split in global batches).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import math
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from cloud_trainer.ablation import ABLATION_FILE, run_ablation
from cloud_trainer.cluster import ClusterRole, cluster_role
from cloud_trainer.config import TrainConfig
from cloud_trainer.data import TaskData, prepare_table_data, prepare_task_data
from cloud_trainer.errors import TrainingError
from cloud_trainer.evaluation import logit_metrics, slice_metrics
from cloud_trainer.export import (
    BACKUP_DIR,
    CHECKPOINT_DIR,
    FEATURE_SPEC_FILE,
    LOG_DIR,
    SAVED_MODEL_DIR,
    SCHEMA_FILE,
    write_export,
)
from cloud_trainer.models import (
    backbone_layer_names,
    build_model,
    compile_model,
    head_layer_names,
)
from cloud_trainer.pipelines import array_dataset, write_tfrecord
from cloud_trainer.record import TrainingRecord, prepare_out_dir
from cloud_trainer.strategies import build_strategy
from fedge.errors import DataError
from fedge.features import FeatureSpec
from fedge.fileio import atomic_write_text
from fedge.schema import Schema

__all__ = ["TrainResult", "TrainingError", "backup_epoch", "predict_logits", "train"]

logger = logging.getLogger(__name__)

_SAVED_EPOCH_KEY = "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"


@dataclass(frozen=True, eq=False)
class TrainResult:
    """The trained in-memory model, its data and spec, and the record that was exported."""

    record: TrainingRecord
    model: tf.keras.Model
    spec: FeatureSpec
    data: TaskData
    out_dir: str
    is_chief: bool


def train(config: TrainConfig, *, progress_stream: TextIO | None = None) -> TrainResult:
    """Run ``config``'s job to completion and export it; resumes from ``OUT/backup`` if any.

    ConfigError/DataError for bad inputs, TrainingError when training itself fails.
    """
    clustered = config.strategy in ("multi-worker", "parameter-server")
    role = cluster_role() if clustered else ClusterRole()
    # The strategy comes before every other TensorFlow call: it may split the CPU into
    # logical devices or join a cluster, both of which must precede runtime start-up.
    strategy = build_strategy(config.strategy, workers=config.workers)
    out = prepare_out_dir(config.out_dir)
    started_at = _utc_now()
    job = f"fedge-train-{config.task}-{uuid.uuid4().hex[:12]}"
    table: tuple[Schema, tuple[str, ...]] | None = None
    data_file = data_sha256 = ""
    if config.data_path is not None:
        assert config.label_column is not None  # TrainConfig checks it
        data_file = os.path.abspath(config.data_path)
        data_sha256 = _file_sha256(data_file)
        data, user_table = prepare_table_data(
            data_file,
            label_column=config.label_column,
            numeric=config.numeric,
            categorical=config.categorical,
            exclude=config.exclude,
            seed=config.seed,
            test_fraction=config.test_fraction,
            data_fraction=config.data_fraction,
        )
        table = (user_table.schema, user_table.label_names)
        if role.is_chief:
            for warning in user_table.warnings:
                logger.warning("%s: %s", os.path.basename(data_file), warning)
    else:
        data = prepare_task_data(
            config.task,
            seed=config.seed,
            test_fraction=config.test_fraction,
            data_fraction=config.data_fraction,
        )
    if config.tfrecord_path and role.is_chief:
        write_tfrecord(config.tfrecord_path, data.x_train, data.y_train)
    replicas = int(strategy.num_replicas_in_sync)
    global_batch = config.batch_size * replicas
    logger.info(
        "task %s: %d training / %d test examples, %d replica(s), global batch %d",
        config.task,
        len(data.y_train),
        len(data.y_test),
        replicas,
        global_batch,
    )
    tf.keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_model(config.task, input_shape=data.input_shape, num_classes=data.num_classes)
        compile_model(model, learning_rate=config.learning_rate)
    fit_inputs: dict[str, Any]
    if config.strategy == "parameter-server":
        fit_inputs = {
            "x": _per_worker_input(data.x_train, data.y_train, global_batch, seed=config.seed),
            "steps_per_epoch": math.ceil(len(data.y_train) / global_batch),
            "validation_data": _per_worker_input(data.x_test, data.y_test, global_batch),
            "validation_steps": math.ceil(len(data.y_test) / global_batch),
        }
    else:
        fit_inputs = {
            "x": array_dataset(
                data.x_train, data.y_train, batch_size=global_batch, shuffle_seed=config.seed
            ),
            "validation_data": array_dataset(data.x_test, data.y_test, batch_size=global_batch),
        }

    backup_dir = os.path.join(out, BACKUP_DIR)
    resumed = backup_epoch(backup_dir)
    if resumed is not None:
        logger.info(
            "resuming from epoch %d (%d of %d epochs done before the restart)",
            resumed,
            resumed,
            config.epochs,
        )
    tracker = _EpochTracker()
    # Keras sends a non-chief's checkpoints and logs to workertemp_<id> dirs it removes.
    # Parameter-server training accepts epoch-level callbacks only.
    per_batch = config.strategy != "parameter-server"
    callbacks: list[tf.keras.callbacks.Callback] = [
        tf.keras.callbacks.TerminateOnNaN() if per_batch else _StopOnNaNEpoch(),
        tf.keras.callbacks.ModelCheckpoint(
            os.path.join(out, CHECKPOINT_DIR, "epoch-{epoch:03d}"), save_weights_only=True
        ),
        tf.keras.callbacks.TensorBoard(
            log_dir=os.path.join(out, LOG_DIR), write_graph=False, profile_batch=0
        ),
        tracker,
    ]
    if config.progress and role.is_chief:
        progress = _BatchProgress if per_batch else _Progress
        callbacks.append(progress(progress_stream or sys.stderr, config.epochs))
    # Last: an epoch counts as done in the backup only once every other callback finished it.
    callbacks.append(tf.keras.callbacks.BackupAndRestore(backup_dir=backup_dir))
    try:
        model.fit(**fit_inputs, epochs=config.epochs, callbacks=callbacks, verbose=0)
    except tf.errors.OpError as exc:
        raise TrainingError(f"training failed: {exc.message}") from exc
    if model.stop_training:
        raise TrainingError("training stopped: the loss became NaN or infinite")
    if config.strategy == "multi-worker" and role.num_workers > 1:
        # Non-chief workers remove their workertemp backup dirs at each epoch end; wait for
        # every worker to leave fit() before the chief removes the emptied backup dir.
        _barrier(strategy)
    if role.is_chief:
        _remove_if_empty(backup_dir)

    train_metrics = logit_metrics(predict_logits(model, data.x_train), data.y_train)
    test_logits = predict_logits(model, data.x_test)
    test_metrics = logit_metrics(test_logits, data.y_test)
    slices: dict[str, dict[str, float]] = {}
    if data.region is not None and data.test_regions is not None:
        slices = slice_metrics(test_logits, data.y_test, data.test_regions, name=data.region)
    metrics = {f"train_{k}": v for k, v in train_metrics.items() if k != "auc"}
    metrics.update({f"test_{k}": v for k, v in test_metrics.items()})
    initial_epoch = tracker.first_epoch if tracker.first_epoch is not None else (resumed or 0)
    artifacts = {
        "saved_model": SAVED_MODEL_DIR,
        "feature_spec": FEATURE_SPEC_FILE,
        "checkpoints": CHECKPOINT_DIR,
        "logs": LOG_DIR,
    }
    if table is not None:
        artifacts["schema"] = SCHEMA_FILE
    if config.ablation and role.is_chief:
        report = run_ablation(
            data,
            epochs=config.epochs,
            batch_size=config.batch_size,
            seed=config.seed,
            learning_rate=config.learning_rate,
        )
        text = json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n"
        atomic_write_text(os.path.join(out, ABLATION_FILE), text)
        artifacts["ablation"] = ABLATION_FILE
    record = TrainingRecord(
        task=config.task,
        model=model.name,
        strategy=config.strategy,
        replicas=replicas,
        workers=role.num_workers,
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        epochs_run=tracker.epochs_run,
        batch_size=config.batch_size,
        global_batch_size=global_batch,
        learning_rate=config.learning_rate,
        seed=config.seed,
        test_fraction=config.test_fraction,
        data_fraction=config.data_fraction,
        data_fingerprint=data.fingerprint,
        num_train_examples=len(data.y_train),
        num_test_examples=len(data.y_test),
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        head_layers=tuple(head_layer_names(model)),
        backbone_layers=tuple(backbone_layer_names(model)),
        host=socket.gethostname(),
        user=_user(),
        started_at=started_at,
        finished_at=_utc_now(),
        tensorflow_version=tf.__version__,
        training_job=job,
        data_file=data_file,
        data_sha256=data_sha256,
        label_column=config.label_column or "",
        metrics=metrics,
        slice_metrics=slices,
        artifacts=artifacts,
    )
    write_export(out, model=model, spec=data.spec, record=record, role=role, table=table)
    return TrainResult(
        record=record, model=model, spec=data.spec, data=data, out_dir=out, is_chief=role.is_chief
    )


def backup_epoch(backup_dir: str | os.PathLike[str]) -> int | None:
    """Epochs completed by the interrupted run backed up in ``backup_dir``; None if none."""
    chief_dir = os.path.join(os.fspath(backup_dir), "chief")
    latest = tf.train.latest_checkpoint(chief_dir) if os.path.isdir(chief_dir) else None
    if latest is None:
        return None
    try:
        saved = int(tf.train.load_checkpoint(latest).get_tensor(_SAVED_EPOCH_KEY))
    except (tf.errors.OpError, ValueError, KeyError) as exc:
        logger.warning("unreadable backup %s (%s); Keras will decide", latest, exc)
        return None
    return saved + 1 if saved >= 0 else None


def predict_logits(
    model: tf.keras.Model, x: npt.NDArray[np.float32], *, batch_size: int = 1024
) -> npt.NDArray[np.float32]:
    """The model's logits for ``x``, computed locally (no cross-worker collectives)."""
    parts: list[npt.NDArray[np.float32]] = [
        np.asarray(model(x[i : i + batch_size], training=False), dtype=np.float32)
        for i in range(0, len(x), batch_size)
    ]
    logits: npt.NDArray[np.float32] = np.concatenate(parts)
    return logits


class _EpochTracker(tf.keras.callbacks.Callback):  # type: ignore[misc]
    """Which epoch ``fit`` started at (after any restore) and how many it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.first_epoch: int | None = None
        self.epochs_run = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.first_epoch is None:
            self.first_epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epochs_run += 1


class _StopOnNaNEpoch(tf.keras.callbacks.Callback):  # type: ignore[misc]
    """TerminateOnNaN at epoch ends, for strategies without batch-level callbacks."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            logger.error("epoch %d: invalid loss %s, terminating training", epoch + 1, loss)
            self.model.stop_training = True


class _Progress(tf.keras.callbacks.Callback):  # type: ignore[misc]
    """A one-line-per-epoch progress bar on ``stream`` (see :class:`_BatchProgress`)."""

    _WIDTH = 24

    def __init__(self, stream: TextIO, epochs: int) -> None:
        super().__init__()
        self._stream = stream
        self._epochs = epochs
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._start = 0.0
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = time.monotonic()
        self._epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        steps = self.params.get("steps") or 0
        values = " ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items()))
        elapsed = time.monotonic() - self._start
        start = "\r" if self._tty else ""
        self._stream.write(f"{start}{self._bar(steps)} {values} ({elapsed:.1f}s)\n")
        self._stream.flush()

    def _bar(self, done: int) -> str:
        steps = self.params.get("steps") or max(done, 1)
        filled = int(self._WIDTH * min(done, steps) / steps)
        bar = "=" * filled + "." * (self._WIDTH - filled)
        return f"epoch {self._epoch + 1}/{self._epochs} [{bar}] {done}/{steps}"


class _BatchProgress(_Progress):
    """:class:`_Progress`, redrawn in place after every batch on a terminal."""

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._tty:
            self._stream.write("\r" + self._bar(batch + 1))
            self._stream.flush()


def _per_worker_input(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.integer[Any]],
    global_batch: int,
    *,
    seed: int | None = None,
) -> tf.keras.utils.experimental.DatasetCreator:
    """A parameter-server worker's input: ``(x, y)`` repeated, batched, shuffled with ``seed``
    plus the worker's pipeline id (so workers draw different orders) when ``seed`` is given."""
    features = np.asarray(x, dtype=np.float32)
    labels = np.asarray(y, dtype=np.int64)

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((features, labels))
        if seed is not None:
            ds = ds.shuffle(len(labels), seed=seed + context.input_pipeline_id)
        batch = context.get_per_replica_batch_size(global_batch)
        return ds.repeat().batch(batch).prefetch(tf.data.AUTOTUNE)

    return tf.keras.utils.experimental.DatasetCreator(dataset_fn)


def _barrier(strategy: tf.distribute.Strategy) -> None:
    """Return only once every replica of ``strategy`` got here (an all-reduce of ones)."""
    ones = strategy.run(lambda: tf.constant(1.0))
    strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)


def _remove_if_empty(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return digest.hexdigest()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
