"""Validate statistics against a schema, and for drift and skew, as TFDV does.

:func:`validate` returns a tensorflow-metadata ``Anomalies`` keyed by feature name, with
TensorFlow Data Validation's anomaly types and short descriptions:

- ``SCHEMA_MISSING_COLUMN`` a schema feature absent from the data (unless deprecated);
- ``SCHEMA_NEW_COLUMN`` a data feature the schema does not list;
- ``UNEXPECTED_DATA_TYPE`` a feature whose values are not of the schema's type. fedge reads
  every numeric column as floats and integer codes as categorical strings, so ``FLOAT``
  statistics fit an ``INT`` feature, and ``STRING`` statistics fit one when every value is
  an integer literal;
- ``ENUM_TYPE_UNEXPECTED_STRING_VALUES`` values outside the feature's string domain, when
  the in-domain share is below ``distribution_constraints.min_domain_mass`` (1.0 by
  default: any value outside). Folded rare values (``__other__`` in device reports) are
  unknown, not outside;
- ``FEATURE_TYPE_LOW_FRACTION_PRESENT`` / ``FEATURE_TYPE_LOW_NUMBER_PRESENT`` presence
  below ``presence.min_fraction`` / ``min_count``;
- ``COMPARATOR_L_INFTY_HIGH`` drift (vs ``previous``) or skew (vs ``serving``) of a string
  feature: the L-infinity distance of the normalized value counts is above the
  ``drift_comparator`` / ``skew_comparator`` ``infinity_norm.threshold``;
- ``COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH`` the same for a numeric feature: the
  Jensen-Shannon divergence (base-2 logarithms, so in [0, 1]) of the two histograms above
  ``jensen_shannon_divergence.threshold``. Histograms are aligned as TFDV aligns them
  (finite buckets re-bucketed onto the union of their boundaries, each count spread
  uniformly; point masses and infinite buckets kept apart).

A feature with no comparator is not compared. Every computed distance is recorded in
``drift_skew_info``, above its threshold or not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from coordinator.dataval.schema import feature_name
from coordinator.dataval.statistics import OTHER_VALUE
from fedge.errors import DataError

__all__ = ["infinity_norm", "jensen_shannon_divergence", "validate"]

_Info = anomalies_pb2.AnomalyInfo
_Stats = statistics_pb2.FeatureNameStatistics
_Measurement = anomalies_pb2.DriftSkewInfo.Measurement
_STATS_TYPE = {
    _Stats.INT: "INT",
    _Stats.FLOAT: "FLOAT",
    _Stats.STRING: "STRING",
    _Stats.BYTES: "BYTES",
    _Stats.STRUCT: "STRUCT",
}
_DEPRECATED = (schema_pb2.DEPRECATED, schema_pb2.DISABLED)
_Buckets = list[tuple[float, float, float]]
_Vector = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True)
class _Reason:
    type: int
    short: str
    description: str


def _dataset(stats: statistics_pb2.DatasetFeatureStatisticsList, what: str) -> Any:
    if len(stats.datasets) != 1:
        raise DataError(f"{what}: expected statistics of one dataset, got {len(stats.datasets)}")
    return stats.datasets[0]


def _features(dataset: Any) -> dict[str, Any]:
    return {feature_name(f): f for f in dataset.features}


def _common(stat: Any) -> Any:
    if stat.HasField("string_stats"):
        return stat.string_stats.common_stats
    return stat.num_stats.common_stats


def _value_counts(stat: Any) -> dict[str, float]:
    buckets = stat.string_stats.rank_histogram.buckets
    if buckets:
        return {b.label: float(b.sample_count) for b in buckets}
    return {t.value: float(t.frequency) for t in stat.string_stats.top_values}


def infinity_norm(a: dict[str, float], b: dict[str, float]) -> tuple[float, str]:
    """The L-infinity distance of two normalized value counts, and the value where it is."""
    total_a, total_b = sum(a.values()), sum(b.values())
    best, where = 0.0, ""
    for value in sorted(set(a) | set(b)):
        pa = a.get(value, 0.0) / total_a if total_a else 0.0
        pb = b.get(value, 0.0) / total_b if total_b else 0.0
        if abs(pa - pb) >= best:
            best, where = abs(pa - pb), value
    return best, where


def _histogram(stat: Any) -> _Buckets:
    histograms = stat.num_stats.histograms
    chosen = next(
        (h for h in histograms if h.type == statistics_pb2.Histogram.STANDARD),
        histograms[0] if histograms else None,
    )
    if chosen is None:
        return []
    return [(b.low_value, b.high_value, b.sample_count) for b in chosen.buckets]


def _rebucket(histogram: _Buckets, bounds: Sequence[float]) -> _Vector:
    """Counts on the intervals between ``bounds`` (which hold every bucket edge), each
    bucket's count spread uniformly over its range."""
    out = np.zeros(max(len(bounds) - 1, 0))
    for low, high, count in histogram:
        first = int(np.searchsorted(bounds, low))
        last = int(np.searchsorted(bounds, high))
        for i in range(first, last):
            out[i] += count * (bounds[i + 1] - bounds[i]) / (high - low)
    return out


def _split(histogram: _Buckets) -> tuple[_Buckets, dict[float, float], float]:
    """Finite buckets, point masses (zero-width buckets) and the mass of infinite buckets."""
    finite: _Buckets = []
    points: dict[float, float] = {}
    infinite = 0.0
    for low, high, count in histogram:
        if not (math.isfinite(low) and math.isfinite(high)):
            infinite += count
        elif low == high:
            points[low] = points.get(low, 0.0) + count
        else:
            finite.append((low, high, count))
    return finite, points, infinite


def _aligned(a: _Buckets, b: _Buckets) -> tuple[_Vector, _Vector]:
    """Both histograms on common buckets, as TFDV aligns them: finite buckets re-bucketed
    onto the union of their boundaries (when those differ), then one bucket per point mass,
    then the infinite buckets' masses as buckets the other side has empty."""
    (fa, pa, ia), (fb, pb, ib) = _split(a), _split(b)
    edges_a = {v for x in fa for v in x[:2]}
    edges_b = {v for x in fb for v in x[:2]}
    if edges_a == edges_b:
        va, vb = np.array([x[2] for x in fa]), np.array([x[2] for x in fb])
    else:
        bounds = sorted(edges_a | edges_b)
        va, vb = _rebucket(fa, bounds), _rebucket(fb, bounds)
    points = sorted(set(pa) | set(pb))
    extra_a = [pa.get(p, 0.0) for p in points]
    extra_b = [pb.get(p, 0.0) for p in points]
    if ia:
        extra_a, extra_b = [*extra_a, ia], [*extra_b, 0.0]
    if ib:
        extra_a, extra_b = [*extra_a, 0.0], [*extra_b, ib]
    return np.concatenate([va, extra_a]), np.concatenate([vb, extra_b])


def jensen_shannon_divergence(a: _Buckets, b: _Buckets) -> float:
    """JS divergence (log base 2, at most 1) of two histograms of (low, high, count)
    buckets; 0.0 when either is empty."""
    pa, pb = _aligned(a, b)
    if pa.sum() <= 0 or pb.sum() <= 0:
        return 0.0
    pa, pb = pa / pa.sum(), pb / pb.sum()
    m = (pa + pb) / 2

    def kl(p: np.ndarray[Any, np.dtype[np.float64]]) -> float:
        keep = p > 0
        return float(np.sum(p[keep] * np.log2(p[keep] / m[keep])))

    return min(max(0.0, (kl(pa) + kl(pb)) / 2), 1.0)


def _domain(schema: schema_pb2.Schema, feature: schema_pb2.Feature) -> Any | None:
    if feature.HasField("string_domain"):
        return feature.string_domain
    if feature.WhichOneof("domain_info") == "domain":
        for domain in schema.string_domain:
            if domain.name == feature.domain:
                return domain
        raise DataError(f"feature {feature.name!r} names an unknown domain {feature.domain!r}")
    return None


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _type_reason(feature: schema_pb2.Feature, stat: Any) -> _Reason | None:
    kind = _STATS_TYPE.get(stat.type, "UNKNOWN")
    expected = schema_pb2.FeatureType.Name(feature.type)
    if feature.type == schema_pb2.TYPE_UNKNOWN:
        return None
    if feature.type == schema_pb2.BYTES and kind in ("STRING", "BYTES"):
        return None
    if feature.type == schema_pb2.FLOAT and kind in ("FLOAT", "INT"):
        return None
    if feature.type == schema_pb2.INT and (
        kind in ("INT", "FLOAT") or (kind == "STRING" and all(map(_is_int, _value_counts(stat))))
    ):
        return None
    return _Reason(
        _Info.UNEXPECTED_DATA_TYPE,
        "Unexpected data type",
        f"Expected data of type: {expected} but got {kind}",
    )


def _percent(share: float) -> str:
    return "<1%" if share < 0.01 else f"~{round(share * 100)}%"


def _domain_reason(
    schema: schema_pb2.Schema, feature: schema_pb2.Feature, stat: Any
) -> _Reason | None:
    domain = _domain(schema, feature)
    if domain is None or not stat.HasField("string_stats"):
        return None
    allowed = set(domain.value)
    counts = _value_counts(stat)
    total = sum(counts.values())
    outside = {v: c for v, c in counts.items() if v not in allowed and v != OTHER_VALUE}
    if not outside or not total:
        return None
    min_mass = 1.0
    if feature.HasField("distribution_constraints"):
        min_mass = feature.distribution_constraints.min_domain_mass
    if 1.0 - sum(outside.values()) / total >= min_mass:
        return None
    listed = ", ".join(f"{v} ({_percent(c / total)})" for v, c in sorted(outside.items()))
    return _Reason(
        _Info.ENUM_TYPE_UNEXPECTED_STRING_VALUES,
        "Unexpected string values",
        f"Examples contain values missing from the schema: {listed}.",
    )


def _presence_reasons(feature: schema_pb2.Feature, stat: Any, num_examples: int) -> list[_Reason]:
    reasons = []
    present = _common(stat).num_non_missing
    presence = feature.presence
    if (
        presence.min_fraction > 0
        and num_examples
        and present / num_examples < presence.min_fraction
    ):
        reasons.append(
            _Reason(
                _Info.FEATURE_TYPE_LOW_FRACTION_PRESENT,
                "Column dropped",
                "The feature was present in fewer examples than expected: minimum fraction = "
                f"{presence.min_fraction:g}, actual = {present / num_examples:.6g}",
            )
        )
    if present < presence.min_count:
        reasons.append(
            _Reason(
                _Info.FEATURE_TYPE_LOW_NUMBER_PRESENT,
                "Column dropped",
                "The feature was present in fewer examples than expected: minimum count = "
                f"{presence.min_count}, actual = {present}",
            )
        )
    return reasons


def _compare(
    comparator: schema_pb2.FeatureComparator,
    current: Any,
    other: Any,
    *,
    against: str,
) -> tuple[list[Any], list[_Reason]]:
    measurements: list[Any] = []
    reasons: list[_Reason] = []
    is_string = current.HasField("string_stats") and other.HasField("string_stats")
    is_numeric = current.HasField("num_stats") and other.HasField("num_stats")
    if is_string and comparator.HasField("infinity_norm"):
        threshold = comparator.infinity_norm.threshold
        value, where = infinity_norm(_value_counts(current), _value_counts(other))
        measurements.append(
            _Measurement(type=_Measurement.L_INFTY, value=value, threshold=threshold)
        )
        if value > threshold:
            reasons.append(
                _Reason(
                    _Info.COMPARATOR_L_INFTY_HIGH,
                    f"High Linfty distance between {against}",
                    f"The Linfty distance between {against} is {value:.6g} (up to six "
                    f"significant digits), above the threshold {threshold:g}. The feature "
                    f"value with maximum difference is: {where}",
                )
            )
    if is_numeric and comparator.HasField("jensen_shannon_divergence"):
        threshold = comparator.jensen_shannon_divergence.threshold
        value = jensen_shannon_divergence(_histogram(current), _histogram(other))
        measurements.append(
            _Measurement(
                type=_Measurement.JENSEN_SHANNON_DIVERGENCE, value=value, threshold=threshold
            )
        )
        if value > threshold:
            reasons.append(
                _Reason(
                    _Info.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH,
                    f"High approximate Jensen-Shannon divergence between {against}",
                    f"The approximate Jensen-Shannon divergence between {against} is "
                    f"{value:.6g} (up to six significant digits), above the threshold "
                    f"{threshold:g}.",
                )
            )
    return measurements, reasons


def _deprecated(feature: schema_pb2.Feature) -> bool:
    return feature.deprecated or feature.lifecycle_stage in _DEPRECATED


def validate(
    stats: statistics_pb2.DatasetFeatureStatisticsList,
    schema: schema_pb2.Schema,
    *,
    previous: statistics_pb2.DatasetFeatureStatisticsList | None = None,
    serving: statistics_pb2.DatasetFeatureStatisticsList | None = None,
) -> anomalies_pb2.Anomalies:
    """The anomalies of ``stats`` against ``schema``, drift vs ``previous`` and skew vs
    ``serving`` (each the statistics of one dataset); empty ``anomaly_info`` when none."""
    dataset = _dataset(stats, "statistics")
    current = _features(dataset)
    before = _features(_dataset(previous, "previous statistics")) if previous else {}
    served = _features(_dataset(serving, "serving statistics")) if serving else {}
    result = anomalies_pb2.Anomalies()
    result.baseline.CopyFrom(schema)
    result.anomaly_name_format = anomalies_pb2.Anomalies.SERIALIZED_PATH
    reasons: dict[str, list[_Reason]] = {}
    listed = {f.name for f in schema.feature}
    for feature in schema.feature:
        if _deprecated(feature):
            continue
        stat = current.get(feature.name)
        if stat is None:
            reasons[feature.name] = [
                _Reason(
                    _Info.SCHEMA_MISSING_COLUMN, "Column dropped", "Column is completely missing"
                )
            ]
            continue
        found: list[_Reason] = []
        type_reason = _type_reason(feature, stat)
        if type_reason is not None:
            found.append(type_reason)
        else:
            domain_reason = _domain_reason(schema, feature, stat)
            if domain_reason is not None:
                found.append(domain_reason)
        found += _presence_reasons(feature, stat, dataset.num_examples)
        info = anomalies_pb2.DriftSkewInfo()
        if feature.name in before and feature.HasField("drift_comparator"):
            measured, drift = _compare(
                feature.drift_comparator, stat, before[feature.name], against="current and previous"
            )
            info.drift_measurements.extend(measured)
            found += drift
        if feature.name in served and feature.HasField("skew_comparator"):
            measured, skew = _compare(
                feature.skew_comparator, stat, served[feature.name], against="training and serving"
            )
            info.skew_measurements.extend(measured)
            found += skew
        if info.drift_measurements or info.skew_measurements:
            info.path.step.append(feature.name)
            result.drift_skew_info.append(info)
        if found:
            reasons[feature.name] = found
    for name in current:
        if name not in listed:
            reasons[name] = [
                _Reason(
                    _Info.SCHEMA_NEW_COLUMN,
                    "New column",
                    "New column (column in data but not in schema)",
                )
            ]
    for name, found in reasons.items():
        _add_info(result, name, found)
    return result


def _add_info(result: anomalies_pb2.Anomalies, name: str, reasons: list[_Reason]) -> None:
    info = result.anomaly_info[name]
    info.path.step.append(name)
    info.severity = _Info.ERROR
    for reason in reasons:
        info.reason.add(
            type=reason.type, short_description=reason.short, description=reason.description
        )
    if len(reasons) == 1:
        info.short_description = reasons[0].short
        info.description = reasons[0].description
    else:
        info.short_description = "Multiple errors"
        info.description = " ".join(r.description for r in reasons)
