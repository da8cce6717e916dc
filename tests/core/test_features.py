"""Tests of fedge.features: the feature spec built from statistics and its transform."""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from fedge.errors import ConfigError, FeatureError
from fedge.features import CategoricalFeature, FeatureSpec, NumericFeature
from fedge.schema import Schema
from fedge.stats import StatsConfig, compute_stats, merge_stats
from tests.support.taxi_columns import TAXI_SCHEMA, taxi_columns

SYNTH_SCHEMA = Schema(
    numeric=("x", "pixels"),
    categorical=("color",),
    label="y",
    num_classes=3,
    shapes={"pixels": (2, 3)},
)
DIGITS_SCHEMA = Schema(
    numeric=("pixels",), categorical=(), label="digit", num_classes=10, shapes={"pixels": (8, 8)}
)

Array = npt.NDArray[Any]
Columns = dict[str, Array]


def _taxi() -> Columns:
    return taxi_columns()[0]


def _synthetic(n: int = 300, seed: int = 3) -> Columns:
    rng = np.random.default_rng(seed)
    x = rng.normal(10.0, 4.0, n)
    x[rng.random(n) < 0.2] = np.nan
    pixels = rng.integers(0, 17, (n, 2, 3)).astype(np.float64)
    color = rng.choice(np.array(["red"] * 5 + ["green"] * 3 + ["blue", None], dtype=object), n)
    return {"x": x, "pixels": pixels, "color": color}


def _spec(columns: Columns, schema: Schema = SYNTH_SCHEMA, **options: Any) -> FeatureSpec:
    return FeatureSpec.from_stats(compute_stats(columns, schema=schema), schema=schema, **options)


def test_transform_zscores_numeric_and_fills_missing_with_zero() -> None:
    columns = _synthetic()
    out = _spec(columns).transform(columns)
    x = columns["x"]
    expected = (x - np.nanmean(x)) / np.nanstd(x)
    expected[np.isnan(x)] = 0.0
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], expected, rtol=1e-6, atol=1e-6)
    assert out[np.isnan(x), 0].tolist() == [0.0] * int(np.isnan(x).sum())


def test_flat_layout_is_numeric_in_order_then_one_hot_blocks() -> None:
    columns = _synthetic()
    spec = _spec(columns)
    pixel_names = [f"pixels[{i},{j}]" for i in range(2) for j in range(3)]
    assert spec.feature_names() == [
        "x",
        *pixel_names,
        "color=red",
        "color=green",
        "color=blue",
        "color=<OOV>",
    ]
    assert spec.output_shape == (11,)
    assert spec.output_dim == 11
    out = spec.transform(columns)
    assert out.shape == (300, 11)
    pooled = columns["pixels"]
    np.testing.assert_allclose(
        out[:, 1:7], ((pooled - pooled.mean()) / pooled.std()).reshape(300, 6), rtol=1e-6
    )
    one_hot = out[:, 7:]
    np.testing.assert_array_equal(one_hot.sum(axis=1), np.ones(300))
    np.testing.assert_array_equal(one_hot[:, 0], columns["color"] == "red")
    np.testing.assert_array_equal(one_hot[:, 3], [v is None for v in columns["color"]])


def test_minmax_maps_digit_pixels_to_unit_interval_and_keeps_image_shape() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 17, (40, 8, 8)).astype(np.float64)
    pixels[0, 0, 0], pixels[1, 0, 0] = 0.0, 16.0
    spec = _spec({"pixels": pixels}, DIGITS_SCHEMA, normalization={"pixels": "minmax"})
    out = spec.transform({"pixels": pixels})
    assert spec.output_shape == (8, 8)
    assert spec.output_dim == 64
    assert len(spec.feature_names()) == 64
    assert out.shape == (40, 8, 8)
    np.testing.assert_array_equal(out, (pixels / 16.0).astype(np.float32))


def test_vocabulary_is_most_frequent_first_ties_by_value_and_capped() -> None:
    schema = Schema(numeric=(), categorical=("c",), label="y", num_classes=2)
    values = np.array(["b", "a", "c", "c", "d", "d", "e", None], dtype=object)
    assert _spec({"c": values}, schema).categorical[0].vocabulary == ("c", "d", "a", "b", "e")
    assert _spec({"c": values}, schema, max_vocab=3).categorical[0].vocabulary == ("c", "d", "a")
    assert _spec({"c": values}, schema, min_count=2).categorical[0].vocabulary == ("c", "d")


def test_unseen_and_missing_categories_go_to_oov_bucket() -> None:
    spec = _spec(_synthetic())
    fresh = {
        "x": np.array([1.0, 2.0, 3.0]),
        "pixels": np.zeros((3, 2, 3)),
        "color": np.array(["purple", None, "green"], dtype=object),
    }
    color = spec.categorical[0]
    np.testing.assert_array_equal(color.indices(fresh["color"]), [3, 3, 1])
    out = spec.transform(fresh)
    np.testing.assert_array_equal(out[:, 7:], [[0, 0, 0, 1], [0, 0, 0, 1], [0, 1, 0, 0]])


def test_folded_other_count_never_enters_the_vocabulary() -> None:
    columns = _synthetic()
    stats = compute_stats(columns, schema=SYNTH_SCHEMA, config=StatsConfig(min_category_count=50))
    assert "__other__" in stats.categorical("color").value_counts
    spec = FeatureSpec.from_stats(stats, schema=SYNTH_SCHEMA)
    assert spec.categorical[0].vocabulary == ("red", "green")


def test_spec_from_merged_stats_transforms_like_spec_from_whole_taxi() -> None:
    columns = _taxi()
    rows = len(columns["fare"])
    shards = [
        compute_stats({k: v[index] for k, v in columns.items()}, schema=TAXI_SCHEMA)
        for index in np.array_split(np.arange(rows), 7)
    ]
    merged = functools.reduce(merge_stats, shards)
    whole = compute_stats(columns, schema=TAXI_SCHEMA)
    options: dict[str, Any] = {"max_vocab": 40, "clip_zscore": 5.0}
    from_merged = FeatureSpec.from_stats(merged, schema=TAXI_SCHEMA, **options)
    from_whole = FeatureSpec.from_stats(whole, schema=TAXI_SCHEMA, **options)
    assert [f.vocabulary for f in from_merged.categorical] == [
        f.vocabulary for f in from_whole.categorical
    ]
    a, b = from_merged.transform(columns), from_whole.transform(columns)
    assert a.shape == (rows, 3 + 8 + 41 + 41)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert np.abs(a[:, :3]).max() <= 5.0


def test_json_round_trip_gives_identical_spec_and_output() -> None:
    columns = _taxi()
    spec = FeatureSpec.from_stats(
        compute_stats(columns, schema=TAXI_SCHEMA),
        schema=TAXI_SCHEMA,
        fill_values={"trip_seconds": 0.0},
        clip_zscore=4.0,
    )
    text = spec.to_json()
    back = FeatureSpec.from_json(text)
    assert back == spec
    assert back.to_json() == text
    np.testing.assert_array_equal(back.transform(columns), spec.transform(columns))
    doc = json.loads(text)
    assert (doc["format"], doc["version"]) == ("fedge.feature_spec", 1)
    image = _spec({"pixels": np.ones((3, 8, 8))}, DIGITS_SCHEMA, normalization={"pixels": "minmax"})
    assert FeatureSpec.from_json(image.to_json()) == image


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        '{"format": "fedge.feature_spec", "version": 2, "numeric": [], "categorical": []}',
        '{"format": "fedge.feature_spec", "version": 1, "numeric": [], "categorical": []}',
        '{"format": "fedge.feature_spec", "version": 1, "numeric": [{"name": "x"}],'
        ' "categorical": []}',
        '{"format": "fedge.feature_spec", "version": 1, "numeric": [{"name": "x", "shape": [],'
        ' "normalization": "zscore", "offset": 0, "scale": 0, "fill": 0, "clip": null}],'
        ' "categorical": []}',
        '{"format": "fedge.feature_spec", "version": 1, "numeric": [{"name": "x", "shape": [],'
        ' "normalization": "log", "offset": 0, "scale": 1, "fill": 0, "clip": null}],'
        ' "categorical": []}',
        '{"format": "fedge.feature_spec", "version": 1, "numeric": [],'
        ' "categorical": [{"name": "c", "vocabulary": ["a", "a"]}]}',
        '{"format": "fedge.feature_spec", "version": 1, "numeric": [],'
        ' "categorical": [{"name": 3, "vocabulary": []}]}',
    ],
)
def test_from_json_rejects_invalid_documents(text: str) -> None:
    with pytest.raises(FeatureError, match="not a valid feature spec"):
        FeatureSpec.from_json(text)


def test_transform_errors_name_the_column() -> None:
    columns = _synthetic(n=10)
    spec = _spec(columns)
    cases: list[tuple[Columns, str]] = [
        ({k: v for k, v in columns.items() if k != "pixels"}, "'pixels' is missing"),
        ({**columns, "color": columns["color"][:7]}, "'color' has 7 rows"),
        ({**columns, "x": columns["x"].astype(str)}, "'x'.*float64"),
        ({**columns, "pixels": np.zeros((10, 3, 2))}, "'pixels'.*shape"),
        ({**columns, "color": np.arange(10)}, "'color'.*object array"),
    ]
    for bad, message in cases:
        with pytest.raises(FeatureError, match=message):
            spec.transform(bad)


def test_transform_leaves_inputs_unchanged() -> None:
    columns = _synthetic()
    before = {k: v.copy() for k, v in columns.items()}
    _spec(columns, clip_zscore=1.0).transform(columns)
    for name, value in columns.items():
        np.testing.assert_array_equal(value, before[name])


def test_constant_column_gets_scale_one_and_constant_fill_is_raw_units() -> None:
    schema = Schema(numeric=("k", "v"), categorical=(), label="y", num_classes=2)
    columns = {"k": np.full(4, 7.0), "v": np.array([1.0, np.nan, 3.0, 5.0])}
    spec = _spec(columns, schema, fill_values={"v": 1.0})
    assert spec.numeric[0].scale == 1.0
    out = spec.transform(columns)
    np.testing.assert_array_equal(out[:, 0], np.zeros(4))
    assert out[1, 1] == out[0, 1] < 0


def test_clip_zscore_bounds_normalized_values() -> None:
    schema = Schema(numeric=("v",), categorical=(), label="y", num_classes=2)
    columns = {"v": np.array([0.0] * 99 + [1000.0])}
    out = _spec(columns, schema, clip_zscore=2.0).transform(columns)
    assert out.max() == 2.0
    assert _spec(columns, schema).transform(columns).max() > 9.0


def test_minmax_without_extremes_is_refused() -> None:
    columns = _synthetic()
    stats = compute_stats(columns, schema=SYNTH_SCHEMA, config=StatsConfig(include_extremes=False))
    with pytest.raises(FeatureError, match="include_extremes"):
        FeatureSpec.from_stats(stats, schema=SYNTH_SCHEMA, normalization={"pixels": "minmax"})


@pytest.mark.parametrize(
    "options",
    [
        {"max_vocab": 0},
        {"min_count": 0},
        {"normalization": {"color": "minmax"}},
        {"normalization": {"x": "log"}},
        {"fill_values": {"x": math.nan}},
        {"clip_zscore": -1.0},
    ],
)
def test_from_stats_rejects_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        _spec(_synthetic(n=20), **options)


def test_from_stats_rejects_stats_that_do_not_cover_the_schema() -> None:
    columns = _synthetic(n=20)
    narrow = Schema(
        numeric=("x", "pixels"), categorical=(), label="y", num_classes=3, shapes={"pixels": (2, 3)}
    )
    with pytest.raises(FeatureError, match="categorical column 'color'"):
        FeatureSpec.from_stats(compute_stats(columns, schema=narrow), schema=SYNTH_SCHEMA)
    flat = Schema(numeric=("x", "pixels"), categorical=("color",), label="y", num_classes=3)
    flat_columns = {**columns, "pixels": columns["pixels"][:, 0, 0]}
    with pytest.raises(FeatureError, match=r"'pixels'.*shape"):
        FeatureSpec.from_stats(compute_stats(flat_columns, schema=flat), schema=SYNTH_SCHEMA)


def test_features_validate_at_construction() -> None:
    with pytest.raises(FeatureError, match="scale"):
        NumericFeature(name="x", normalization="zscore", offset=0.0, scale=-1.0, fill=0.0)
    with pytest.raises(FeatureError, match="distinct"):
        CategoricalFeature(name="c", vocabulary=("a", "a"))
    with pytest.raises(FeatureError, match="unique"):
        FeatureSpec(numeric=(), categorical=(CategoricalFeature("c", ()),) * 2)
