"""fedge's TFRecord reader and writer against TensorFlow's, in both directions."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from cloud_trainer.pipelines import write_tfrecord
from fedge.data import infer_table, read_table
from fedge.schema import Schema
from fedge.tfrecord import read_examples, write_examples


def _tf_example(i: int) -> bytes:
    feature = {
        "fare": tf.train.Feature(float_list=tf.train.FloatList(value=[1.25 * i])),
        "kind": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a" if i % 3 else b"b"])),
        "tipped": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[b"yes" if i % 2 else b"no"])
        ),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_fedge_reads_what_tensorflow_writes(tmp_path: Path, compression: str | None) -> None:
    path = tmp_path / ("t.tfrecord.gz" if compression else "t.tfrecord")
    with tf.io.TFRecordWriter(str(path), options=compression) as writer:
        for i in range(7):
            writer.write(_tf_example(i))
    table = infer_table(path, label_column="tipped")
    assert table.schema.numeric == ("fare",)
    assert table.schema.categorical == ("kind",)
    assert table.label_names == ("no", "yes")
    np.testing.assert_allclose(table.dataset.columns["fare"], 1.25 * np.arange(7))
    np.testing.assert_array_equal(table.dataset.labels, np.arange(7) % 2)


@pytest.mark.parametrize("suffix", [".tfrecord", ".tfrecord.gz"])
def test_tensorflow_reads_what_fedge_writes(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    examples = [{"x": [0.5, float(i)], "c": [b"k%d" % i], "n": [i, -i]} for i in range(4)]
    write_examples(path, examples)
    compression = "GZIP" if suffix.endswith(".gz") else ""
    records = list(tf.data.TFRecordDataset(str(path), compression_type=compression))
    assert len(records) == 4
    parsed = tf.train.Example.FromString(records[3].numpy()).features.feature
    assert list(parsed["x"].float_list.value) == [0.5, 3.0]
    assert list(parsed["c"].bytes_list.value) == [b"k3"]
    assert list(parsed["n"].int64_list.value) == [3, -3]


def test_trainer_tfrecord_output_reads_with_read_table(tmp_path: Path) -> None:
    """``fedge-train --to-tfrecord`` files: a flat float ``features`` list and a ``label``."""
    x = np.arange(12, dtype=np.float32).reshape(4, 3) / 4
    y = np.array([0, 1, 1, 0])
    path = tmp_path / "train.tfrecord"
    write_tfrecord(path, x, y)
    assert next(iter(read_examples(path)))["label"] == [0]
    schema = Schema(
        numeric=("features",),
        categorical=(),
        label="label",
        num_classes=2,
        shapes={"features": (3,)},
    )
    data = read_table(path, schema, ("0", "1"))
    np.testing.assert_allclose(data.columns["features"], x)
    np.testing.assert_array_equal(data.labels, y)
    inferred = infer_table(path, label_column="label")
    assert inferred.schema == schema
