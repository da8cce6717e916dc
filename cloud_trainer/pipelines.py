"""tf.data input pipelines: from arrays and from CSV (through the shared feature spec); the
TFRecord writer behind ``fedge-train --to-tfrecord``.

CSV is read with fedge's one CSV reader and transformed with :class:`FeatureSpec`, the code
the edge client runs too, so training and serving cannot disagree on preprocessing.
TFRecord files hold already-transformed examples: a flat float ``features`` list and an
int64 ``label`` per ``tf.train.Example``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from fedge.data import read_csv_columns
from fedge.errors import DataError
from fedge.features import FeatureSpec
from fedge.schema import Schema
from fedge.validation import check_int

__all__ = [
    "FEATURES_KEY",
    "LABEL_KEY",
    "array_dataset",
    "csv_dataset",
    "write_tfrecord",
]

logger = logging.getLogger(__name__)

FEATURES_KEY = "features"
LABEL_KEY = "label"
_SHUFFLE_BUFFER = 10_000


def array_dataset(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.integer[Any]],
    *,
    batch_size: int,
    shuffle_seed: int | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of ``(x, y)``; shuffled with ``shuffle_seed`` (reshuffled every epoch) if given.

    Sharding across workers is by element (``AutoShardPolicy.DATA``): in-memory data has
    no files to shard.
    """
    check_int(batch_size, "batch_size", low=1)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{x.shape[0]} feature rows but {y.shape[0]} labels")
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        ds = ds.shuffle(
            min(len(y), _SHUFFLE_BUFFER) or 1, seed=shuffle_seed, reshuffle_each_iteration=True
        )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    return _with_data_sharding(ds)


def csv_dataset(
    path: str | os.PathLike[str],
    *,
    schema: Schema,
    spec: FeatureSpec,
    batch_size: int,
    shuffle_seed: int | None = None,
) -> tf.data.Dataset:
    """Batches of ``(spec.transform(columns), labels)`` from a labelled CSV file.

    The file follows :func:`fedge.data.read_csv_columns` conventions (a header row; an
    image column in ``<name>_<i>`` fields).
    """
    columns = read_csv_columns(path, schema=schema, label="required")
    labels = columns[schema.label]
    return array_dataset(
        spec.transform(columns), labels, batch_size=batch_size, shuffle_seed=shuffle_seed
    )


def write_tfrecord(
    path: str | os.PathLike[str],
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.integer[Any]],
) -> int:
    """Write one ``tf.train.Example`` per row of ``x`` (flattened) with label ``y``; the count."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{x.shape[0]} feature rows but {y.shape[0]} labels")
    target = os.fspath(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        with tf.io.TFRecordWriter(target) as writer:
            for row, label in zip(x.reshape(len(x), -1), y, strict=True):
                example = tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            FEATURES_KEY: tf.train.Feature(
                                float_list=tf.train.FloatList(value=row.tolist())
                            ),
                            LABEL_KEY: tf.train.Feature(
                                int64_list=tf.train.Int64List(value=[int(label)])
                            ),
                        }
                    )
                )
                writer.write(example.SerializeToString())
    except (OSError, tf.errors.OpError) as exc:
        raise DataError(f"cannot write TFRecord file {target}: {exc}") from exc
    logger.info("wrote %d examples to %s", len(y), target)
    return len(y)


def _with_data_sharding(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)
