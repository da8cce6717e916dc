"""A tensorflow-metadata ``Schema``: inferred from statistics, or read and written as text.

:func:`infer_schema` follows TensorFlow Data Validation's ``infer_schema``: one feature per
statistics feature with its type (``INT``, ``FLOAT``, ``BYTES``), presence ``min_fraction
1.0`` when the feature was never missing (else only ``min_count 1``), ``value_count`` from
the observed values per example, and for a string feature with at most
``max_string_domain_size`` distinct values a top-level ``string_domain`` of the observed
values, named after the feature. No drift or skew comparator is inferred (TFDV sets none):
they are set by hand (or with ``fedge-coordinator data schema``).
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from coordinator.dataval.statistics import OTHER_VALUE
from fedge.errors import DataError
from fedge.fileio import atomic_write_text

__all__ = ["MAX_STRING_DOMAIN_SIZE", "infer_schema", "load_schema", "save_schema"]

MAX_STRING_DOMAIN_SIZE = 100
"""TFDV's default: a string feature with more distinct values gets no domain."""

_TYPES = {
    statistics_pb2.FeatureNameStatistics.INT: schema_pb2.INT,
    statistics_pb2.FeatureNameStatistics.FLOAT: schema_pb2.FLOAT,
    statistics_pb2.FeatureNameStatistics.STRING: schema_pb2.BYTES,
    statistics_pb2.FeatureNameStatistics.BYTES: schema_pb2.BYTES,
}


def feature_name(feature: statistics_pb2.FeatureNameStatistics) -> str:
    """A statistics feature's name (its path joined with ``.``, or the legacy ``name``)."""
    return ".".join(feature.path.step) if feature.path.step else str(feature.name)


def infer_schema(
    stats: statistics_pb2.DatasetFeatureStatisticsList,
    *,
    max_string_domain_size: int = MAX_STRING_DOMAIN_SIZE,
) -> schema_pb2.Schema:
    """A schema describing the first dataset of ``stats`` (TFDV's inference rules)."""
    if len(stats.datasets) != 1:
        raise DataError(f"infer a schema from one dataset's statistics, got {len(stats.datasets)}")
    schema = schema_pb2.Schema()
    for stat in stats.datasets[0].features:
        name = feature_name(stat)
        feature = schema.feature.add()
        feature.name = name
        feature.type = _TYPES[stat.type]
        is_string = stat.HasField("string_stats")
        common = stat.string_stats.common_stats if is_string else stat.num_stats.common_stats
        if common.num_missing == 0 and common.num_non_missing > 0:
            feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        if common.num_non_missing and common.min_num_values == common.max_num_values > 0:
            feature.value_count.min = common.min_num_values
            feature.value_count.max = common.max_num_values
        values = [b.label for b in stat.string_stats.rank_histogram.buckets]
        values = [v for v in values if v != OTHER_VALUE]
        if is_string and 0 < len(values) <= max_string_domain_size:
            domain = schema.string_domain.add()
            domain.name = name
            domain.value.extend(sorted(values))
            feature.domain = name
    return schema


def load_schema(path: Path) -> schema_pb2.Schema:
    """Read a text-proto schema (as TFDV's ``write_schema_text`` writes it)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read schema {path}: {exc}") from exc
    schema = schema_pb2.Schema()
    try:
        text_format.Parse(text, schema)
    except text_format.ParseError as exc:
        raise DataError(f"{path} is not a tensorflow-metadata Schema text proto: {exc}") from exc
    return schema


def save_schema(schema: schema_pb2.Schema, path: Path) -> None:
    """Write ``schema`` as a text proto, atomically."""
    atomic_write_text(Path(path), text_format.MessageToString(schema))
