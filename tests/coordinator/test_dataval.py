"""coordinator.dataval: tensorflow-metadata statistics, schema and anomalies against numpy.

The taxi drift case follows the issue: a copy of half the trips with fares x1.5 and the
``Cash`` payment type removed drifts on exactly ``fare`` and ``payment_type`` against the
other half, with distances recomputed here from the raw columns (value counts for the
L-infinity distance, the entropy form of the Jensen-Shannon divergence); the unshifted half
reports no anomaly.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from coordinator.dataval.anomalies import infinity_norm, jensen_shannon_divergence, validate
from coordinator.dataval.schema import infer_schema, load_schema, save_schema
from coordinator.dataval.statistics import (
    dataset_statistics,
    load_statistics,
    merge_reports,
    save_statistics,
    to_tfmd,
)
from fedge.data.dataset import Dataset
from fedge.data.taxi import TAXI_SCHEMA, load_taxi
from fedge.errors import DataError
from fedge.schema import Schema
from fedge.stats import DEFAULT_HISTOGRAM_EDGES, compute_stats

_Info = anomalies_pb2.AnomalyInfo
NUMERIC_JSD = 0.05
STRING_LINF = 0.1


@pytest.fixture(scope="module")
def taxi() -> Dataset:
    return load_taxi()


def _subset(dataset: Dataset, index: Any, **replace: Any) -> Dataset:
    columns = {name: column[index] for name, column in dataset.columns.items()}
    columns.update(replace)
    return Dataset(name=dataset.name, schema=dataset.schema, columns=columns,
                   labels=dataset.labels[index])  # fmt: skip


@pytest.fixture(scope="module")
def halves(taxi: Dataset) -> tuple[Dataset, Dataset]:
    order = np.random.default_rng(7).permutation(len(taxi.labels))
    half = len(order) // 2
    return _subset(taxi, order[:half]), _subset(taxi, order[half:])


@pytest.fixture(scope="module")
def shifted(halves: tuple[Dataset, Dataset]) -> Dataset:
    _, second = halves
    keep = np.array([value != "Cash" for value in second.columns["payment_type"]])
    fare = np.asarray(second.columns["fare"])[keep] * 1.5
    return _subset(second, keep, fare=fare)


def _features(stats: statistics_pb2.DatasetFeatureStatisticsList) -> dict[str, Any]:
    return {feature.path.step[0]: feature for feature in stats.datasets[0].features}


def _schema_with_comparators(taxi: Dataset) -> schema_pb2.Schema:
    """Comparators on every feature; the label (in the statistics too) is left unchecked, as
    removing the cash trips, whose tips go unrecorded, changes the label's distribution."""
    schema = infer_schema(dataset_statistics(taxi, label=TAXI_SCHEMA.label))
    for feature in schema.feature:
        if feature.name == TAXI_SCHEMA.label:
            continue
        if feature.type == schema_pb2.FLOAT:
            feature.drift_comparator.jensen_shannon_divergence.threshold = NUMERIC_JSD
            feature.skew_comparator.jensen_shannon_divergence.threshold = NUMERIC_JSD
        else:
            feature.drift_comparator.infinity_norm.threshold = STRING_LINF
            feature.skew_comparator.infinity_norm.threshold = STRING_LINF
    return schema


def _linf(a: Any, b: Any) -> float:
    ca = Counter(v for v in a if v is not None)
    cb = Counter(v for v in b if v is not None)
    na, nb = sum(ca.values()), sum(cb.values())
    return max(abs(ca[k] / na - cb[k] / nb) for k in set(ca) | set(cb))


def _jsd(a: Any, b: Any) -> float:
    bins = np.array([-np.inf, *DEFAULT_HISTOGRAM_EDGES, np.inf])
    # np.histogram's bins are [e_i, e_i+1) like fedge's: the same bucketing, counted apart.
    p = np.histogram(a[~np.isnan(a)], bins=bins)[0].astype(float)
    q = np.histogram(b[~np.isnan(b)], bins=bins)[0].astype(float)
    p, q = p / p.sum(), q / q.sum()

    def entropy(x: Any) -> float:
        x = x[x > 0]
        return float(-(x * np.log(x)).sum() / math.log(2))

    return entropy((p + q) / 2) - (entropy(p) + entropy(q)) / 2


# Statistics -------------------------------------------------------------------------------


def test_statistics_files_parse_and_equal_numpy(taxi: Dataset, tmp_path: Path) -> None:
    stats = dataset_statistics(taxi, label=TAXI_SCHEMA.label)
    save_statistics(stats, tmp_path / "stats.pb")
    save_statistics(stats, tmp_path / "stats.pbtxt")
    parsed = statistics_pb2.DatasetFeatureStatisticsList.FromString(
        (tmp_path / "stats.pb").read_bytes()
    )
    as_text = text_format.Parse(
        (tmp_path / "stats.pbtxt").read_text(), statistics_pb2.DatasetFeatureStatisticsList()
    )
    assert parsed == as_text == stats
    dataset = parsed.datasets[0]
    assert dataset.num_examples == len(taxi.labels) == 15002
    features = _features(parsed)
    assert list(features) == [*TAXI_SCHEMA.numeric, *TAXI_SCHEMA.categorical, "big_tipper"]
    for name in TAXI_SCHEMA.numeric:
        column = np.asarray(taxi.columns[name], dtype=np.float64)
        present = column[~np.isnan(column)]
        num = features[name].num_stats
        assert features[name].type == statistics_pb2.FeatureNameStatistics.FLOAT
        assert num.common_stats.num_non_missing == present.size
        assert num.common_stats.num_missing == np.isnan(column).sum()
        assert num.mean == pytest.approx(present.mean(), rel=1e-12)
        assert num.std_dev == pytest.approx(present.std(), rel=1e-9)
        assert (num.min, num.max) == (present.min(), present.max())
        assert num.num_zeros == np.count_nonzero(present == 0)
        buckets = num.histograms[0].buckets
        assert sum(b.sample_count for b in buckets) == present.size
    assert features["trip_seconds"].num_stats.common_stats.num_missing == 6
    for name in TAXI_SCHEMA.categorical:
        values = [v for v in taxi.columns[name] if v is not None]
        counts = Counter(values)
        string = features[name].string_stats
        assert string.common_stats.num_non_missing == len(values)
        assert string.common_stats.num_missing == len(taxi.labels) - len(values)
        assert string.unique == len(counts)
        top = counts.most_common(1)[0]
        assert (string.top_values[0].value, string.top_values[0].frequency) == top
        assert {b.label: b.sample_count for b in string.rank_histogram.buckets} == counts
    labels = features["big_tipper"].string_stats
    assert {t.value: t.frequency for t in labels.top_values} == {
        str(c): n for c, n in enumerate(np.bincount(taxi.labels))
    }


def test_merged_device_reports_equal_the_whole_table(taxi: Dataset) -> None:
    shards = np.array_split(np.arange(len(taxi.labels)), 3)
    documents = []
    for shard in shards:
        part = _subset(taxi, shard)
        stats = compute_stats(part.columns, schema=part.schema, labels=part.labels)
        documents.append({**stats.to_dict(), "privacy": {"epsilon": 1.0}})
    merged = _features(to_tfmd(merge_reports(documents), name="devices"))
    whole = _features(dataset_statistics(taxi))
    assert merged.keys() == whole.keys()
    for name, feature in whole.items():
        if feature.HasField("string_stats"):
            assert merged[name].string_stats == feature.string_stats
        else:
            mine, theirs = merged[name].num_stats, feature.num_stats
            assert mine.common_stats == theirs.common_stats
            assert mine.histograms == theirs.histograms
            assert mine.mean == pytest.approx(theirs.mean, rel=1e-12)
            assert mine.std_dev == pytest.approx(theirs.std_dev, rel=1e-9)
    with pytest.raises(DataError, match="no device statistics reports"):
        merge_reports([])


def test_load_statistics_refuses_what_is_not_statistics(tmp_path: Path) -> None:
    (tmp_path / "bad.pbtxt").write_text("not a proto {")
    with pytest.raises(DataError, match="not a DatasetFeatureStatisticsList"):
        load_statistics(tmp_path / "bad.pbtxt")
    with pytest.raises(DataError, match="cannot read statistics"):
        load_statistics(tmp_path / "missing.pb")


# Schema -----------------------------------------------------------------------------------


def test_infer_schema_follows_tfdv_and_round_trips_as_text(taxi: Dataset, tmp_path: Path) -> None:
    schema = infer_schema(dataset_statistics(taxi, label=TAXI_SCHEMA.label))
    features = {f.name: f for f in schema.feature}
    assert features["fare"].type == schema_pb2.FLOAT
    assert features["fare"].presence.min_fraction == 1.0  # never missing
    assert features["trip_seconds"].presence.min_count == 1
    assert not features["trip_seconds"].presence.HasField("min_fraction")  # 6 missing
    assert (features["fare"].value_count.min, features["fare"].value_count.max) == (1, 1)
    assert features["payment_type"].type == schema_pb2.BYTES
    assert features["payment_type"].domain == "payment_type"
    domains = {d.name: list(d.value) for d in schema.string_domain}
    assert domains["payment_type"] == sorted(set(taxi.columns["payment_type"]) - {None})
    assert not any(f.HasField("drift_comparator") for f in schema.feature)
    save_schema(schema, tmp_path / "schema.pbtxt")
    parsed = text_format.Parse((tmp_path / "schema.pbtxt").read_text(), schema_pb2.Schema())
    assert parsed == schema == load_schema(tmp_path / "schema.pbtxt")
    small = infer_schema(dataset_statistics(taxi), max_string_domain_size=10)
    assert {d.name for d in small.string_domain} == {
        "payment_type", "trip_start_day"
    }  # fmt: skip


def test_the_bundled_taxi_schema_loads() -> None:
    path = Path(__file__).parents[2] / "fedge" / "datasets" / "taxi_schema.pbtxt"
    schema = load_schema(path)
    features = {f.name: f for f in schema.feature}
    assert len(features) == 18
    assert features["fare"].type == schema_pb2.FLOAT
    assert features["payment_type"].presence.min_fraction == 1.0
    domains = {d.name: list(d.value) for d in schema.string_domain}
    assert domains["payment_type"] == [
        "Cash", "Credit Card", "Dispute", "No Charge", "Pcard", "Prcard", "Unknown"
    ]  # fmt: skip


def test_load_schema_refuses_a_broken_text_proto(tmp_path: Path) -> None:
    (tmp_path / "schema.pbtxt").write_text('feature { name: "x" typo: 1 }')
    with pytest.raises(DataError, match="not a tensorflow-metadata Schema"):
        load_schema(tmp_path / "schema.pbtxt")


# Drift and skew ---------------------------------------------------------------------------


def test_shifted_taxi_drifts_on_exactly_fare_and_payment_type(
    taxi: Dataset, halves: tuple[Dataset, Dataset], shifted: Dataset
) -> None:
    first, _ = halves
    schema = _schema_with_comparators(taxi)
    anomalies = validate(
        dataset_statistics(shifted, label=TAXI_SCHEMA.label),
        schema,
        previous=dataset_statistics(first, label=TAXI_SCHEMA.label),
    )
    parsed = anomalies_pb2.Anomalies.FromString(anomalies.SerializeToString())
    assert set(parsed.anomaly_info) == {"fare", "payment_type"}
    fare, payment = parsed.anomaly_info["fare"], parsed.anomaly_info["payment_type"]
    assert [r.type for r in fare.reason] == [_Info.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH]
    assert [r.type for r in payment.reason] == [_Info.COMPARATOR_L_INFTY_HIGH]
    assert fare.short_description == (
        "High approximate Jensen-Shannon divergence between current and previous"
    )
    assert payment.short_description == "High Linfty distance between current and previous"
    assert payment.description.endswith("The feature value with maximum difference is: Cash")
    measured = {info.path.step[0]: info.drift_measurements[0] for info in parsed.drift_skew_info}
    assert set(measured) == set(TAXI_SCHEMA.features)
    expected_linf = _linf(shifted.columns["payment_type"], first.columns["payment_type"])
    expected_jsd = _jsd(np.asarray(shifted.columns["fare"]), np.asarray(first.columns["fare"]))
    assert measured["payment_type"].value == pytest.approx(expected_linf, abs=1e-12)
    assert measured["fare"].value == pytest.approx(expected_jsd, abs=1e-12)
    assert expected_linf > 0.5
    assert expected_jsd > NUMERIC_JSD
    assert (
        measured["fare"].type == anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE
    )
    assert measured["fare"].threshold == pytest.approx(NUMERIC_JSD)
    for name in ("trip_miles", "trip_seconds"):
        assert measured[name].value == pytest.approx(
            _jsd(np.asarray(shifted.columns[name]), np.asarray(first.columns[name])), abs=1e-12
        )
    assert measured["company"].value == pytest.approx(
        _linf(shifted.columns["company"], first.columns["company"]), abs=1e-12
    )


def test_an_unshifted_split_reports_no_anomaly(
    taxi: Dataset, halves: tuple[Dataset, Dataset]
) -> None:
    first, second = halves
    anomalies = validate(
        dataset_statistics(second, label=TAXI_SCHEMA.label),
        _schema_with_comparators(taxi),
        previous=dataset_statistics(first, label=TAXI_SCHEMA.label),
        serving=dataset_statistics(first, label=TAXI_SCHEMA.label),
    )
    assert dict(anomalies.anomaly_info) == {}
    values = [m.value for i in anomalies.drift_skew_info for m in i.drift_measurements]
    assert len(values) == 14
    assert max(values) < NUMERIC_JSD
    assert len([m for i in anomalies.drift_skew_info for m in i.skew_measurements]) == 14


def test_skew_against_serving_data_names_training_and_serving(
    taxi: Dataset, halves: tuple[Dataset, Dataset], shifted: Dataset
) -> None:
    first, _ = halves
    anomalies = validate(
        dataset_statistics(first, label=TAXI_SCHEMA.label),
        _schema_with_comparators(taxi),
        serving=dataset_statistics(shifted, label=TAXI_SCHEMA.label),
    )
    assert set(anomalies.anomaly_info) == {"fare", "payment_type"}
    info = anomalies.anomaly_info["payment_type"]
    assert info.short_description == "High Linfty distance between training and serving"
    assert all(not i.drift_measurements for i in anomalies.drift_skew_info)


def test_no_comparator_means_no_drift_check(
    taxi: Dataset, halves: tuple[Dataset, Dataset], shifted: Dataset
) -> None:
    first, _ = halves
    schema = infer_schema(dataset_statistics(taxi))
    anomalies = validate(dataset_statistics(shifted), schema, previous=dataset_statistics(first))
    assert dict(anomalies.anomaly_info) == {}
    assert len(anomalies.drift_skew_info) == 0


# Schema violations ------------------------------------------------------------------------

SMALL = Schema(numeric=("x",), categorical=("color",), label="y", num_classes=2)


def _small(x: list[float], color: list[str | None]) -> statistics_pb2.DatasetFeatureStatisticsList:
    columns = {"x": np.array(x, dtype=np.float64), "color": np.array(color, dtype=object)}
    return to_tfmd(compute_stats(columns, schema=SMALL), name="small")


def _types(anomalies: anomalies_pb2.Anomalies) -> dict[str, list[str]]:
    return {
        name: [_Info.Type.Name(r.type) for r in info.reason]
        for name, info in anomalies.anomaly_info.items()
    }


def test_schema_violations_get_tfdv_types_and_descriptions() -> None:
    baseline = _small([1.0, 2.0, 3.0, 4.0], ["red", "red", "blue", "blue"])
    schema = infer_schema(baseline)
    extra = schema.feature.add(name="gone", type=schema_pb2.INT)
    extra.presence.min_count = 1
    assert dict(validate(baseline, schema).anomaly_info).keys() == {"gone"}
    current = _small([1.0, math.nan, 3.0, 4.0], ["red", "green", None, "blue"])
    anomalies = validate(current, schema)
    assert _types(anomalies) == {
        "gone": ["SCHEMA_MISSING_COLUMN"],
        "x": ["FEATURE_TYPE_LOW_FRACTION_PRESENT"],
        "color": ["ENUM_TYPE_UNEXPECTED_STRING_VALUES", "FEATURE_TYPE_LOW_FRACTION_PRESENT"],
    }
    color = anomalies.anomaly_info["color"]
    assert color.short_description == "Multiple errors"
    assert color.reason[0].description == (
        "Examples contain values missing from the schema: green (~33%)."
    )
    assert anomalies.anomaly_info["gone"].description == "Column is completely missing"
    assert anomalies.anomaly_info["x"].reason[0].description == (
        "The feature was present in fewer examples than expected: minimum fraction = 1, "
        "actual = 0.75"
    )
    assert anomalies.baseline == schema


def test_min_domain_mass_tolerates_a_share_of_unknown_values() -> None:
    schema = infer_schema(_small([1.0, 2.0, 3.0, 4.0], ["red", "red", "blue", "blue"]))
    current = _small([1.0, 2.0, 3.0, 4.0], ["red", "red", "blue", "green"])
    assert "color" in validate(current, schema).anomaly_info
    feature = next(f for f in schema.feature if f.name == "color")
    feature.distribution_constraints.min_domain_mass = 0.75
    assert dict(validate(current, schema).anomaly_info) == {}
    feature.distribution_constraints.min_domain_mass = 0.8
    assert _types(validate(current, schema)) == {"color": ["ENUM_TYPE_UNEXPECTED_STRING_VALUES"]}


def test_new_column_and_type_mismatch() -> None:
    stats = _small([1.0, 2.0], ["1", "2"])
    schema = schema_pb2.Schema()
    schema.feature.add(name="x", type=schema_pb2.BYTES)
    assert _types(validate(stats, schema)) == {
        "x": ["UNEXPECTED_DATA_TYPE"],
        "color": ["SCHEMA_NEW_COLUMN"],
    }
    assert validate(stats, schema).anomaly_info["x"].description == (
        "Expected data of type: BYTES but got FLOAT"
    )
    # fedge reads integer codes as categorical strings: they fit an INT feature.
    schema.feature.add(name="color", type=schema_pb2.INT)
    assert set(validate(stats, schema).anomaly_info) == {"x"}
    words = _small([1.0, 2.0], ["one", "2"])
    assert _types(validate(words, schema))["color"] == ["UNEXPECTED_DATA_TYPE"]


def test_jensen_shannon_divergence_aligns_histograms_as_tfdv() -> None:
    assert jensen_shannon_divergence([(0, 1, 10), (1, 2, 10)], [(0, 2, 20)]) == 0.0
    assert jensen_shannon_divergence([(0, 1, 4)], [(1, 2, 4)]) == pytest.approx(1.0)
    # An infinite bucket's mass is a bucket of its own: (1/2, 1/2) against (1, 0).
    mixed = jensen_shannon_divergence([(0, 1, 5), (-math.inf, 0, 5)], [(0, 1, 10)])
    m = np.array([0.75, 0.25])
    expected = (0.5 * np.log2(0.5 / m[0]) + 0.5 * np.log2(0.5 / m[1]) + np.log2(1 / m[0])) / 2
    assert mixed == pytest.approx(expected, abs=1e-12)
    # Point masses line up by value, apart from the finite buckets.
    assert jensen_shannon_divergence([(3, 3, 2), (0, 1, 2)], [(0, 1, 2), (3, 3, 2)]) == 0.0
    assert jensen_shannon_divergence([], [(0, 1, 1)]) == 0.0


def test_infinity_norm_names_the_value_of_the_largest_difference() -> None:
    value, where = infinity_norm({"a": 3, "b": 1}, {"a": 1, "b": 3})
    assert value == pytest.approx(0.5)
    assert where == "b"  # a tie goes to the last value in sorted order, as in TFDV
    value, where = infinity_norm({"a": 8, "b": 2}, {"a": 1, "b": 1, "c": 2})
    assert value == pytest.approx(0.8 - 0.25)
    assert where == "a"
