"""fedge statistics as tensorflow-metadata's ``DatasetFeatureStatisticsList``.

The source is always a :class:`fedge.stats.DatasetStats`: of the cloud's own table
(:func:`dataset_statistics`) or merged from the devices' privacy-preserving reports
(:func:`merge_reports`). Numeric columns become ``FLOAT`` features with ``num_stats``
(mean, population std, min, max, and a ``STANDARD`` histogram whose buckets are fedge's
data-independent bins, so histograms of two spans line up bucket for bucket); categorical
columns become ``STRING`` features with ``string_stats`` (unique, every value in
``top_values`` and in the rank histogram, most frequent first). ``num_zeros`` is not
derivable from mergeable histograms (0 shares a bin with small positives): it is set only
when the caller counted zeros on raw data (:func:`dataset_statistics` does).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import statistics_pb2

from fedge.data.dataset import Dataset
from fedge.errors import DataError, FeatureError
from fedge.fileio import atomic_write_bytes
from fedge.stats import (
    OTHER_CATEGORY,
    CategoricalStats,
    DatasetStats,
    NumericStats,
    StatsConfig,
    compute_stats,
)

__all__ = [
    "OTHER_VALUE",
    "dataset_statistics",
    "load_statistics",
    "merge_reports",
    "save_statistics",
    "to_tfmd",
]

_FeatureStats = statistics_pb2.FeatureNameStatistics

OTHER_VALUE = OTHER_CATEGORY
"""The string value of the categories a device folded as too rare to report."""


def _numeric(
    feature: Any, stats: NumericStats, *, width: int, rows: int, zeros: int | None
) -> None:
    feature.type = _FeatureStats.FLOAT
    num = feature.num_stats
    _common(num.common_stats, stats.count, stats.missing, width=width, rows=rows)
    num.mean = stats.mean
    num.std_dev = stats.std
    if stats.min is not None and stats.max is not None:
        num.min = stats.min
        num.max = stats.max
    if zeros is not None:
        num.num_zeros = zeros
    histogram = num.histograms.add()
    histogram.type = statistics_pb2.Histogram.STANDARD
    edges = stats.edges
    lows = (stats.min if stats.min is not None and stats.min < edges[0] else -math.inf, *edges)
    top = stats.max if stats.max is not None and stats.max >= edges[-1] else math.inf
    highs = (*edges, top)
    for low, high, count in zip(lows, highs, stats.counts, strict=True):
        bucket = histogram.buckets.add()
        bucket.low_value = low
        bucket.high_value = high
        bucket.sample_count = count
    histogram.num_nan = 0


def _categorical(feature: Any, stats: CategoricalStats, *, rows: int) -> None:
    feature.type = _FeatureStats.STRING
    string = feature.string_stats
    _common(string.common_stats, stats.count, stats.missing, width=1, rows=rows)
    string.unique = len(stats.value_counts)
    ranked = sorted(stats.value_counts.items(), key=lambda item: (-item[1], item[0]))
    for rank, (value, count) in enumerate(ranked):
        top = string.top_values.add()
        top.value = value
        top.frequency = count
        bucket = string.rank_histogram.buckets.add()
        bucket.low_rank = rank
        bucket.high_rank = rank
        bucket.label = value
        bucket.sample_count = count
    if stats.count:
        total = sum(len(v.encode()) * c for v, c in stats.value_counts.items())
        string.avg_length = total / stats.count


def _common(common: Any, count: int, missing: int, *, width: int, rows: int) -> None:
    """Per-example counts. A shaped column counts elements: its missing rows are the
    missing elements over the row width, rounded down (exact when a row's elements are
    missing together, as fedge's readers leave them)."""
    present_rows = rows - missing // width if width else rows
    common.num_non_missing = present_rows
    common.num_missing = rows - present_rows
    if present_rows:
        common.min_num_values = width
        common.max_num_values = width
        common.avg_num_values = float(width)
        common.tot_num_values = count


def to_tfmd(
    stats: DatasetStats,
    *,
    name: str,
    label: str | None = None,
    label_names: Sequence[str] | None = None,
    num_zeros: Mapping[str, int] | None = None,
) -> statistics_pb2.DatasetFeatureStatisticsList:
    """One dataset named ``name`` holding every column of ``stats``, in their order.

    With ``label`` and label counts in ``stats``, the classes are a ``STRING`` feature of
    that name too (``label_names[c]`` for class ``c``, else ``"0"``, ``"1"``, ...).
    ``num_zeros`` gives counted zeros per numeric column.
    """
    result = statistics_pb2.DatasetFeatureStatisticsList()
    dataset = result.datasets.add()
    dataset.name = name
    dataset.num_examples = stats.num_rows
    zeros = num_zeros or {}
    for column, column_stats in stats.columns.items():
        feature = dataset.features.add()
        feature.path.step.append(column)
        if isinstance(column_stats, NumericStats):
            width = math.prod(column_stats.shape)
            _numeric(
                feature, column_stats, width=width, rows=stats.num_rows, zeros=zeros.get(column)
            )
        else:
            _categorical(feature, column_stats, rows=stats.num_rows)
    if label is not None and stats.label_counts is not None:
        if label in stats.columns:
            raise FeatureError(f"the label {label!r} is also a column of the statistics")
        if label_names is not None and len(label_names) != len(stats.label_counts):
            raise FeatureError(
                f"{len(label_names)} label names for {len(stats.label_counts)} classes"
            )
        names = list(label_names) if label_names is not None else None
        counts = {(names[c] if names else str(c)): n for c, n in enumerate(stats.label_counts) if n}
        feature = dataset.features.add()
        feature.path.step.append(label)
        _categorical(
            feature,
            CategoricalStats(count=stats.num_rows, missing=0, value_counts=counts),
            rows=stats.num_rows,
        )
    return result


def dataset_statistics(
    dataset: Dataset,
    *,
    name: str | None = None,
    label: str | None = None,
    label_names: Sequence[str] | None = None,
) -> statistics_pb2.DatasetFeatureStatisticsList:
    """Statistics of a table the cloud holds: fedge's exact statistics plus zero counts."""
    stats = compute_stats(
        dataset.columns, schema=dataset.schema, labels=dataset.labels, config=StatsConfig()
    )
    zeros = {
        column: int(np.count_nonzero(np.asarray(dataset.columns[column], dtype=np.float64) == 0))
        for column in dataset.schema.numeric
    }
    return to_tfmd(
        stats, name=name or dataset.name, label=label, label_names=label_names, num_zeros=zeros
    )


def merge_reports(documents: Iterable[Mapping[str, Any]]) -> DatasetStats:
    """The merged statistics of stored device reports (``DatasetStats.to_dict`` documents,
    a ``privacy`` entry ignored); DataError when there are none or they do not merge."""
    merged: DatasetStats | None = None
    for document in documents:
        body = {key: value for key, value in document.items() if key != "privacy"}
        try:
            stats = DatasetStats.from_dict(body)
            merged = stats if merged is None else merged.merge(stats)
        except FeatureError as exc:
            raise DataError(f"device statistics reports do not merge: {exc}") from exc
    if merged is None:
        raise DataError("there are no device statistics reports to merge")
    return merged


def _is_text(path: Path) -> bool:
    return path.suffix in {".pbtxt", ".txt", ".textproto"}


def save_statistics(stats: statistics_pb2.DatasetFeatureStatisticsList, path: Path) -> None:
    """Write ``stats`` atomically: text proto for ``.pbtxt``/``.txt``, else binary."""
    path = Path(path)
    data = (
        text_format.MessageToString(stats).encode() if _is_text(path) else stats.SerializeToString()
    )
    atomic_write_bytes(path, data)


def load_statistics(path: Path) -> statistics_pb2.DatasetFeatureStatisticsList:
    """Read a statistics file written by :func:`save_statistics` (or by TFDV)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read statistics {path}: {exc.strerror or exc}") from exc
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    try:
        if _is_text(path):
            text_format.Parse(data.decode(), stats)
        else:
            stats.ParseFromString(data)
    except (text_format.ParseError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path} is not a DatasetFeatureStatisticsList: {exc}") from exc
    if not stats.datasets:
        raise DataError(f"{path} holds no dataset statistics")
    return stats
