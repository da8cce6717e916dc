"""Tests of fedge.stats: per-column statistics, exact merging, JSON and privacy knobs."""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.errors import ConfigError, FeatureError
from fedge.schema import Schema
from fedge.stats import (
    DEFAULT_HISTOGRAM_EDGES,
    DEFAULT_STATS_CONFIG,
    OTHER_CATEGORY,
    CategoricalStats,
    DatasetStats,
    NumericStats,
    StatsConfig,
    compute_stats,
    merge_stats,
)
from tests.support.taxi_columns import TAXI_SCHEMA, taxi_columns

SYNTH_SCHEMA = Schema(
    numeric=("x", "pixels"),
    categorical=("color",),
    label="y",
    num_classes=3,
    shapes={"pixels": (4, 4)},
)

Array = npt.NDArray[Any]
Columns = dict[str, Array]


def _synthetic(n: int = 1000, seed: int = 7) -> tuple[Columns, Array]:
    rng = np.random.default_rng(seed)
    x = rng.normal(40.0, 12.0, n)
    x[rng.random(n) < 0.15] = np.nan
    pixels = rng.integers(0, 17, (n, 4, 4)).astype(np.float64)
    pixels[rng.random((n, 4, 4)) < 0.05] = np.nan
    color = rng.choice(np.array(["red", "green", "blue", "teal", None], dtype=object), n)
    labels = rng.integers(0, 3, n)
    return {"x": x, "pixels": pixels, "color": color}, labels


def _assert_stats_match(got: DatasetStats, want: DatasetStats) -> None:
    """Counts, histograms, value counts and extremes exact; mean/variance to 1e-9 relative."""
    assert got.num_rows == want.num_rows
    assert got.label_counts == want.label_counts
    assert list(got.columns) == list(want.columns)
    for name, a in got.columns.items():
        b = want.columns[name]
        if isinstance(a, NumericStats):
            assert isinstance(b, NumericStats)
            assert (a.count, a.missing, a.min, a.max) == (b.count, b.missing, b.min, b.max)
            assert (a.edges, a.counts, a.shape) == (b.edges, b.counts, b.shape)
            assert a.mean == pytest.approx(b.mean, rel=1e-9)
            assert a.variance == pytest.approx(b.variance, rel=1e-9)
        else:
            assert a == b


def _shard_stats(
    columns: Columns,
    labels: Array,
    parts: list[Array],
    *,
    schema: Schema,
    config: StatsConfig = DEFAULT_STATS_CONFIG,
) -> list[DatasetStats]:
    return [
        compute_stats(
            {k: v[index] for k, v in columns.items()},
            schema=schema,
            labels=labels[index],
            config=config,
        )
        for index in parts
    ]


def test_compute_stats_matches_numpy_on_synthetic_table() -> None:
    columns, labels = _synthetic()
    stats = compute_stats(columns, schema=SYNTH_SCHEMA, labels=labels)

    x = stats.numeric("x")
    present = columns["x"][~np.isnan(columns["x"])]
    assert (x.count, x.missing) == (present.size, 1000 - present.size)
    assert x.mean == pytest.approx(present.mean(), rel=1e-12)
    assert x.variance == pytest.approx(present.var(), rel=1e-12)
    assert (x.min, x.max) == (present.min(), present.max())
    assert sum(x.counts) == x.count
    assert stats.num_rows == 1000
    assert stats.label_counts == tuple(np.bincount(labels, minlength=3))

    color = stats.categorical("color")
    expected = Counter(v for v in columns["color"] if v is not None)
    assert dict(color.value_counts) == dict(expected)
    assert color.missing == sum(v is None for v in columns["color"])


def test_multidimensional_column_is_pooled_over_elements() -> None:
    columns, _ = _synthetic()
    pixels = compute_stats(columns, schema=SYNTH_SCHEMA).numeric("pixels")
    flat = columns["pixels"].reshape(-1)
    present = flat[~np.isnan(flat)]
    assert pixels.shape == (4, 4)
    assert pixels.count + pixels.missing == 1000 * 16
    assert pixels.count == present.size
    assert pixels.mean == pytest.approx(present.mean(), rel=1e-12)
    assert (pixels.min, pixels.max) == (0.0, 16.0)


def test_histogram_uses_half_open_bins_with_under_and_overflow() -> None:
    schema = Schema(numeric=("v",), categorical=(), label="y", num_classes=2)
    values = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 5.0, np.nan])
    config = StatsConfig(histogram_edges={"v": [0.0, 1.0, 2.0]})
    stats = compute_stats({"v": values}, schema=schema, config=config).numeric("v")
    assert stats.edges == (0.0, 1.0, 2.0)
    assert stats.counts == (1, 2, 1, 2)
    assert stats.missing == 1


def test_default_edges_are_symmetric_log_spaced_and_data_independent() -> None:
    edges = np.array(DEFAULT_HISTOGRAM_EDGES)
    assert len(edges) == 75
    assert np.all(np.diff(edges) > 0)
    np.testing.assert_array_equal(edges, -edges[::-1])
    assert {0.0, 0.001, 0.002, 0.005, 1.0, 2.0, 5.0, 1e9} <= set(DEFAULT_HISTOGRAM_EDGES)
    small, _ = _synthetic(n=20, seed=1)
    large, _ = _synthetic(n=500, seed=2)
    a = compute_stats(small, schema=SYNTH_SCHEMA).numeric("x")
    b = compute_stats(large, schema=SYNTH_SCHEMA).numeric("x")
    assert a.edges == b.edges == DEFAULT_HISTOGRAM_EDGES


def test_merge_of_seven_unequal_shards_equals_whole_synthetic() -> None:
    columns, labels = _synthetic()
    whole = compute_stats(columns, schema=SYNTH_SCHEMA, labels=labels)
    parts = np.array_split(np.arange(1000), [3, 4, 150, 152, 600, 990])
    assert len(parts) == 7
    assert len({len(p) for p in parts}) == 7
    shards = _shard_stats(columns, labels, parts, schema=SYNTH_SCHEMA)
    _assert_stats_match(functools.reduce(merge_stats, shards), whole)


def test_merge_of_seven_taxi_shards_equals_whole() -> None:
    columns, labels = taxi_columns()
    whole = compute_stats(columns, schema=TAXI_SCHEMA, labels=labels)
    parts = np.array_split(np.arange(len(labels)), 7)
    assert len({len(p) for p in parts}) == 2
    shards = _shard_stats(columns, labels, parts, schema=TAXI_SCHEMA)
    merged = functools.reduce(merge_stats, shards)
    _assert_stats_match(merged, whole)
    assert merged.categorical("company").missing == 5140
    assert merged.numeric("trip_seconds").missing == 6


def test_merge_is_independent_of_order_and_grouping() -> None:
    columns, labels = taxi_columns()
    parts = np.array_split(np.arange(len(labels)), [10, 500, 501, 4000, 9000, 14000])
    shards = _shard_stats(columns, labels, parts, schema=TAXI_SCHEMA)
    left = functools.reduce(merge_stats, shards)
    right = functools.reduce(lambda acc, s: s.merge(acc), reversed(shards))
    tree = merge_stats(
        merge_stats(merge_stats(shards[0], shards[1]), merge_stats(shards[2], shards[3])),
        merge_stats(shards[4], merge_stats(shards[5], shards[6])),
    )
    shuffled = functools.reduce(merge_stats, [shards[i] for i in (3, 6, 0, 5, 1, 4, 2)])
    for other in (right, tree, shuffled):
        _assert_stats_match(other, left)


def test_merge_with_empty_stats_is_exact_identity() -> None:
    columns, labels = _synthetic()
    stats = compute_stats(columns, schema=SYNTH_SCHEMA, labels=labels)
    nothing = np.arange(0)
    empty = compute_stats(
        {k: v[nothing] for k, v in columns.items()}, schema=SYNTH_SCHEMA, labels=labels[nothing]
    )
    assert empty.num_rows == 0
    assert empty.numeric("x").min is None
    assert stats.merge(empty) == stats
    assert empty.merge(stats) == stats


def test_merge_rejects_different_histogram_edges() -> None:
    columns, _ = _synthetic(n=50)
    a = compute_stats(columns, schema=SYNTH_SCHEMA)
    b = compute_stats(
        columns, schema=SYNTH_SCHEMA, config=StatsConfig(histogram_edges={"x": [0.0, 50.0]})
    )
    with pytest.raises(FeatureError, match=r"'x'.*edges"):
        merge_stats(a, b)


def test_merge_rejects_different_columns_or_labels() -> None:
    columns, labels = _synthetic(n=50)
    a = compute_stats(columns, schema=SYNTH_SCHEMA, labels=labels)
    other = Schema(numeric=("x",), categorical=("color",), label="y", num_classes=3)
    with pytest.raises(FeatureError, match="columns"):
        merge_stats(a, compute_stats(columns, schema=other, labels=labels))
    with pytest.raises(FeatureError, match="label"):
        merge_stats(a, compute_stats(columns, schema=SYNTH_SCHEMA))


def test_stats_json_round_trip_is_exact() -> None:
    for columns, labels, schema in (
        (*taxi_columns(), TAXI_SCHEMA),
        (*_synthetic(), SYNTH_SCHEMA),
    ):
        stats = compute_stats(columns, schema=schema, labels=labels)
        text = json.dumps(stats.to_dict())
        back = DatasetStats.from_dict(json.loads(text))
        assert back == stats
        assert (
            back.numeric(schema.numeric[0]).mean.hex()
            == stats.numeric(schema.numeric[0]).mean.hex()
        )
        assert json.dumps(back.to_dict()) == text


def _mutations() -> list[tuple[str, Any]]:
    def set_(path: tuple[Any, ...], value: Any) -> Any:
        def apply(doc: dict[str, Any]) -> None:
            target = doc
            for key in path[:-1]:
                target = target[key]
            if value is KeyError:
                del target[path[-1]]
            else:
                target[path[-1]] = value

        return apply

    return [
        ("wrong format", set_(("format",), "something.else")),
        ("wrong version", set_(("version",), 99)),
        ("missing rows", set_(("num_rows",), KeyError)),
        ("negative rows", set_(("num_rows",), -1)),
        ("string count", set_(("columns", 0, "count"), "12")),
        ("bool count", set_(("columns", 0, "missing"), True)),
        ("inconsistent count", set_(("columns", 0, "count"), 1)),
        ("short histogram", set_(("columns", 0, "counts"), [1, 2])),
        ("unsorted edges", set_(("columns", 0, "edges"), [1.0, 0.0])),
        ("min above max", set_(("columns", 0, "min"), 1e6)),
        ("nan mean", set_(("columns", 0, "mean"), math.nan)),
        ("unknown kind", set_(("columns", 0, "kind"), "text")),
        ("extra key", set_(("columns", 0, "extra"), 1)),
        ("negative value count", set_(("columns", 2, "value_counts", "red"), -3)),
        ("value counts list", set_(("columns", 2, "value_counts"), [1, 2])),
        ("label sum", set_(("label_counts",), [1, 2, 3])),
        ("columns not a list", set_(("columns",), 7)),
    ]


@pytest.mark.parametrize(("what", "mutate"), _mutations(), ids=[m[0] for m in _mutations()])
def test_from_dict_rejects_invalid_documents(what: str, mutate: Any) -> None:
    columns, labels = _synthetic(n=60)
    doc = compute_stats(columns, schema=SYNTH_SCHEMA, labels=labels).to_dict()
    DatasetStats.from_dict(json.loads(json.dumps(doc)))
    mutate(doc)
    with pytest.raises(FeatureError, match="not a valid statistics document"):
        DatasetStats.from_dict(doc)


def test_min_category_count_folds_rare_values_into_other() -> None:
    schema = Schema(numeric=(), categorical=("c",), label="y", num_classes=2)
    values = np.array(["a"] * 5 + ["b"] * 2 + ["c", "d", None], dtype=object)
    config = StatsConfig(min_category_count=3)
    stats = compute_stats({"c": values}, schema=schema, config=config).categorical("c")
    assert dict(stats.value_counts) == {"a": 5, OTHER_CATEGORY: 4}
    assert (stats.count, stats.missing) == (9, 1)
    exact = compute_stats({"c": values}, schema=schema).categorical("c")
    assert dict(exact.value_counts) == {"a": 5, "b": 2, "c": 1, "d": 1}


def test_include_extremes_false_leaves_min_max_out() -> None:
    columns, _ = _synthetic(n=200)
    config = StatsConfig(include_extremes=False)
    stats = compute_stats(columns, schema=SYNTH_SCHEMA, config=config)
    for name in SYNTH_SCHEMA.numeric:
        assert stats.numeric(name).min is None
        assert stats.numeric(name).max is None
    exact = compute_stats(columns, schema=SYNTH_SCHEMA)
    assert stats.merge(exact).numeric("x").max is None
    assert DatasetStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats
    assert stats.numeric("x").mean == exact.numeric("x").mean


def test_compute_stats_errors_name_the_column() -> None:
    columns, _ = _synthetic(n=20)
    cases: list[tuple[Columns, str]] = [
        ({k: v for k, v in columns.items() if k != "color"}, "'color' is missing"),
        ({**columns, "x": columns["x"][:-1]}, "'x' has 19 rows"),
        ({**columns, "color": columns["color"][:-2]}, "'color' has 18 rows"),
        ({**columns, "x": columns["x"].astype(object)}, "'x'.*float64"),
        ({**columns, "pixels": columns["pixels"].reshape(20, 16)}, "'pixels'.*shape"),
        ({**columns, "x": np.full(20, np.inf)}, "'x'.*infinite"),
        ({**columns, "color": np.arange(20).astype(object)}, "'color'.*str or None"),
        ({**columns, "color": np.array(["a", 1] * 10, dtype=object)}, "'color'.*str or None"),
        ({**columns, "color": np.zeros(20)}, "'color'.*object array"),
        ({**columns, "x": list(columns["x"])}, "'x'.*numpy array"),  # type: ignore[dict-item]
    ]
    for bad, message in cases:
        with pytest.raises(FeatureError, match=message):
            compute_stats(bad, schema=SYNTH_SCHEMA)


def test_labels_are_validated() -> None:
    columns, labels = _synthetic(n=20)
    with pytest.raises(FeatureError, match=r"0\.\.2"):
        compute_stats(columns, schema=SYNTH_SCHEMA, labels=labels + 3)
    with pytest.raises(FeatureError, match="rows"):
        compute_stats(columns, schema=SYNTH_SCHEMA, labels=labels[:5])
    with pytest.raises(FeatureError, match="integer"):
        compute_stats(columns, schema=SYNTH_SCHEMA, labels=labels.astype(float))


def test_stats_config_rejects_bad_options() -> None:
    bad_edges: list[Any] = [[], [1.0, 1.0], [0.0, math.inf], ["a"]]
    for edges in bad_edges:
        with pytest.raises(ConfigError, match="'x'"):
            StatsConfig(histogram_edges={"x": edges})
    with pytest.raises(ConfigError, match="min_category_count"):
        StatsConfig(min_category_count=0)
    columns, _ = _synthetic(n=10)
    with pytest.raises(ConfigError, match="color"):
        compute_stats(
            columns, schema=SYNTH_SCHEMA, config=StatsConfig(histogram_edges={"color": [0.0]})
        )


def test_compute_stats_leaves_inputs_unchanged() -> None:
    columns, labels = _synthetic(n=100)
    before = {k: v.copy() for k, v in columns.items()}
    compute_stats(columns, schema=SYNTH_SCHEMA, labels=labels)
    for name, value in columns.items():
        np.testing.assert_array_equal(value, before[name])


def test_stats_objects_validate_at_construction() -> None:
    with pytest.raises(FeatureError, match="sum"):
        CategoricalStats(count=3, missing=0, value_counts={"a": 2})
    with pytest.raises(FeatureError, match="histogram"):
        NumericStats(
            count=2, missing=0, mean=1.0, m2=0.0, min=1.0, max=1.0, edges=(0.0,), counts=(2,)
        )


_finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.one_of(_finite, st.just(math.nan)), min_size=0, max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=60), min_size=2, max_size=2),
)
def test_merge_equals_whole_on_random_arrays_property(values: list[float], cuts: list[int]) -> None:
    schema = Schema(numeric=("v",), categorical=(), label="y", num_classes=2)
    data = np.array(values, dtype=np.float64)
    parts = np.split(np.arange(len(data)), sorted(min(c, len(data)) for c in cuts))
    a, b, c = (compute_stats({"v": data[p]}, schema=schema).numeric("v") for p in parts)
    whole = compute_stats({"v": data}, schema=schema).numeric("v")
    for merged in (a.merge(b).merge(c), a.merge(b.merge(c)), c.merge(a).merge(b)):
        assert (merged.count, merged.missing, merged.counts) == (
            whole.count,
            whole.missing,
            whole.counts,
        )
        assert (merged.min, merged.max) == (whole.min, whole.max)
        scale = max(1.0, float(np.nanmax(np.abs(data)))) if whole.count else 1.0
        assert merged.mean == pytest.approx(whole.mean, rel=1e-9, abs=1e-12 * scale)
        assert merged.variance == pytest.approx(whole.variance, rel=1e-9, abs=1e-9 * scale**2)
