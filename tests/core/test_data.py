"""Tests for fedge.data: the Dataset type, the CSV reader and the bundled tasks."""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

import fedge.data
from fedge.data import (
    DIGITS_SCHEMA,
    TAXI_SCHEMA,
    Dataset,
    load_digits,
    load_task,
    load_taxi,
    read_csv_columns,
)
from fedge.errors import ConfigError, DataError
from fedge.schema import Schema

TAXI_CSV = resources.files("fedge").joinpath("datasets", "taxi.csv")

SMALL = Schema(
    numeric=("x",),
    categorical=("color",),
    label="y",
    num_classes=3,
    region="color",
    timestamp="ts",
)


@pytest.fixture(scope="module")
def taxi() -> Dataset:
    return load_taxi()


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="module")
def taxi_rows() -> list[dict[str, str]]:
    with TAXI_CSV.open("r", newline="") as stream:
        return list(csv.DictReader(stream))


def _small(**overrides: object) -> Dataset:
    values: dict[str, object] = {
        "name": "small",
        "schema": SMALL,
        "columns": {
            "x": np.array([1.0, np.nan, 3.0]),
            "color": np.array(["red", None, "blue"], dtype=object),
            "ts": np.array([10.0, 20.0, 30.0]),
        },
        "labels": np.array([0, 2, 1]),
    }
    values.update(overrides)
    return Dataset(**values)  # type: ignore[arg-type]


# --- the public API -------------------------------------------------------------------------


def test_all_names_exist_in_package() -> None:
    missing = [name for name in fedge.data.__all__ if not hasattr(fedge.data, name)]
    assert missing == []
    assert len(set(fedge.data.__all__)) == len(fedge.data.__all__)


# --- digits ---------------------------------------------------------------------------------


def test_digits_loads_1797_images_of_8x8_with_10_classes(digits: Dataset) -> None:
    assert len(digits) == 1797
    assert digits.columns["pixels"].shape == (1797, 8, 8)
    assert digits.columns["pixels"].dtype == np.float64
    assert set(digits.labels.tolist()) == set(range(10))
    assert digits.labels.dtype == np.int64
    assert digits.schema == DIGITS_SCHEMA


def test_digits_first_row_matches_raw_file(digits: Dataset) -> None:
    raw = resources.files("fedge").joinpath("datasets", "digits.csv.gz").read_bytes()
    first = gzip.decompress(raw).decode().splitlines()[0].split(",")
    expected = np.array([float(v) for v in first[:64]]).reshape(8, 8)
    np.testing.assert_array_equal(digits.columns["pixels"][0], expected)
    assert digits.labels[0] == int(first[64])
    assert digits.columns["pixels"].min() == 0
    assert digits.columns["pixels"].max() == 16


# --- taxi -----------------------------------------------------------------------------------


def test_taxi_keeps_all_rows_when_none_lacks_fare_or_tips(
    taxi: Dataset, taxi_rows: list[dict[str, str]]
) -> None:
    assert len(taxi_rows) == 15002
    assert all(r["fare"] and r["tips"] for r in taxi_rows)
    assert len(taxi) == 15002


@pytest.mark.parametrize("row", [0, 1, 2, 3, 17, 500, 9999, 15001])
def test_taxi_label_is_tip_over_20_percent_of_fare_by_hand(
    taxi: Dataset, taxi_rows: list[dict[str, str]], row: int
) -> None:
    fare, tips = float(taxi_rows[row]["fare"]), float(taxi_rows[row]["tips"])
    assert taxi.labels[row] == int(tips > 0.2 * fare)
    assert taxi.columns["fare"][row] == fare


def test_taxi_labels_have_both_classes(taxi: Dataset, taxi_rows: list[dict[str, str]]) -> None:
    by_hand = [int(float(r["tips"]) > 0.2 * float(r["fare"])) for r in taxi_rows]
    np.testing.assert_array_equal(taxi.labels, by_hand)
    assert 0 < taxi.labels.mean() < 1


def test_taxi_keeps_missing_values_as_nan_and_none(taxi: Dataset) -> None:
    assert np.isnan(taxi.columns["dropoff_latitude"]).sum() == 483
    assert np.isnan(taxi.columns["pickup_longitude"]).sum() == 2
    assert sum(v is None for v in taxi.columns["company"]) == 5140
    assert sum(v is None for v in taxi.columns["pickup_community_area"]) == 2


def test_taxi_has_no_tips_feature(taxi: Dataset) -> None:
    assert "tips" not in taxi.schema.features
    assert "tips" not in taxi.columns
    assert "tips" not in taxi.features()
    assert TAXI_SCHEMA.label == "big_tipper"


def test_taxi_categoricals_are_strings_and_timestamp_is_numeric(taxi: Dataset) -> None:
    hours = {v for v in taxi.columns["trip_start_hour"] if v is not None}
    assert hours == {str(h) for h in range(24)}
    assert taxi.columns["trip_start_timestamp"].dtype == np.float64
    assert taxi.schema.region == "pickup_community_area"
    assert "trip_start_timestamp" not in taxi.features()


def test_taxi_drops_rows_without_tips_or_fare(tmp_path: Path) -> None:
    with TAXI_CSV.open("r", newline="") as stream:
        lines = stream.read().splitlines()[:6]
    header = lines[0].split(",")
    broken = lines[2].split(",")
    broken[header.index("tips")] = ""
    lines[2] = ",".join(broken)
    path = tmp_path / "taxi.csv"
    path.write_text("\n".join(lines) + "\n")
    loaded = load_taxi(path)
    assert len(loaded) == 4
    np.testing.assert_array_equal(
        loaded.columns["trip_start_timestamp"],
        [float(lines[i].split(",")[header.index("trip_start_timestamp")]) for i in (1, 3, 4, 5)],
    )


# --- the Dataset type -----------------------------------------------------------------------


def test_dataset_rejects_columns_of_different_length() -> None:
    with pytest.raises(DataError, match="'x' has 2 rows"):
        _small(
            columns={
                "x": np.array([1.0, 2.0]),
                "color": np.array(["a", "b", "c"], dtype=object),
                "ts": np.zeros(3),
            }
        )


def test_dataset_rejects_label_out_of_range() -> None:
    with pytest.raises(DataError, match=r"0\.\.2"):
        _small(labels=np.array([0, 3, 1]))


def test_dataset_rejects_missing_feature_column() -> None:
    with pytest.raises(DataError, match="color"):
        _small(columns={"x": np.zeros(3), "ts": np.zeros(3)})


def test_dataset_rejects_missing_timestamp_column() -> None:
    with pytest.raises(DataError, match="ts"):
        _small(columns={"x": np.zeros(3), "color": np.array(["a", "b", "c"], dtype=object)})


def test_dataset_rejects_integer_numeric_column() -> None:
    with pytest.raises(DataError, match="numeric column 'x' must be float64"):
        _small(
            columns={
                "x": np.array([1, 2, 3]),
                "color": np.array(["a", "b", "c"], dtype=object),
                "ts": np.zeros(3),
            }
        )


def test_dataset_rejects_wrong_per_example_shape() -> None:
    with pytest.raises(DataError, match=r"\(8, 8\)"):
        Dataset(
            name="d",
            schema=DIGITS_SCHEMA,
            columns={"pixels": np.zeros((2, 64))},
            labels=np.array([0, 1]),
        )


def test_dataset_rejects_non_string_category() -> None:
    with pytest.raises(DataError, match="'color' holds int"):
        _small(
            columns={
                "x": np.zeros(3),
                "color": np.array(["a", 5, None], dtype=object),
                "ts": np.zeros(3),
            }
        )


def test_dataset_rejects_label_stored_as_column() -> None:
    columns = {"x": np.zeros(3), "color": np.array(["a"] * 3, dtype=object), "ts": np.zeros(3)}
    with pytest.raises(DataError, match="label 'y'"):
        _small(columns={**columns, "y": np.zeros(3)})


def test_dataset_copies_inputs_and_is_read_only() -> None:
    x = np.array([1.0, 2.0, 3.0])
    data = _small(
        columns={"x": x, "color": np.array(["a", "b", "c"], dtype=object), "ts": np.zeros(3)}
    )
    x[0] = 99.0
    assert data.columns["x"][0] == 1.0
    with pytest.raises(ValueError, match="read-only"):
        data.columns["x"][1] = 5.0


def test_take_returns_subset_in_given_order() -> None:
    data = _small()
    subset = data.take(np.array([2, 0]))
    assert len(subset) == 2
    np.testing.assert_array_equal(subset.labels, [1, 0])
    np.testing.assert_array_equal(subset.columns["x"], [3.0, 1.0])
    assert list(subset.columns["color"]) == ["blue", "red"]
    assert len(data) == 3


def test_take_rejects_out_of_range_indices() -> None:
    with pytest.raises(DataError, match=r"0\.\.2"):
        _small().take(np.array([0, 3]))


def test_features_are_schema_features_in_order(taxi: Dataset) -> None:
    assert tuple(taxi.features()) == TAXI_SCHEMA.features
    assert tuple(_small().features()) == ("x", "color")


def test_fingerprint_ignores_column_order_and_name() -> None:
    data = _small()
    reordered = _small(name="other", columns=dict(reversed(list(data.columns.items()))))
    assert reordered.fingerprint() == data.fingerprint()
    assert data.take(np.arange(3)).fingerprint() == data.fingerprint()


def test_fingerprint_changes_with_values_labels_or_missing() -> None:
    base = _small()
    columns = dict(base.columns)
    other_x = _small(columns={**columns, "x": np.array([1.0, np.nan, 3.5])})
    other_color = _small(columns={**columns, "color": np.array(["red", "", "blue"], dtype=object)})
    other_labels = _small(labels=np.array([0, 2, 2]))
    prints = {d.fingerprint() for d in (base, other_x, other_color, other_labels)}
    assert len(prints) == 4


def test_fingerprint_is_stable_across_processes(digits: Dataset) -> None:
    code = "from fedge.data import load_digits; print(load_digits().fingerprint())"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert other.stdout.strip() == digits.fingerprint()
    assert len(digits.fingerprint()) == 64


# --- the CSV reader -------------------------------------------------------------------------

CSV_TEXT = "x,color,ts,y,unused\n1.5,red,10,0,a\n,,20,2,b\n3,8.0,30,1,c\n"


def test_read_csv_turns_empty_fields_into_nan_and_none() -> None:
    columns = read_csv_columns(io.StringIO(CSV_TEXT), schema=SMALL)
    assert math.isnan(columns["x"][1])
    assert columns["x"][0] == 1.5
    assert columns["color"][1] is None
    assert columns["color"].dtype == object
    assert "unused" not in columns


def test_read_csv_normalises_integral_float_categories() -> None:
    columns = read_csv_columns(io.StringIO(CSV_TEXT), schema=SMALL)
    assert columns["color"][2] == "8"
    assert fedge.data.canonical_category(" 02134 ") == "02134"


def test_read_csv_returns_labels_when_present() -> None:
    columns = read_csv_columns(io.StringIO(CSV_TEXT), schema=SMALL)
    np.testing.assert_array_equal(columns["y"], [0, 2, 1])
    assert columns["y"].dtype == np.int64
    data = Dataset.from_columns(name="small", schema=SMALL, columns=columns)
    assert "y" not in data.columns
    np.testing.assert_array_equal(data.labels, [0, 2, 1])


def test_read_csv_accepts_file_without_label() -> None:
    text = "x,color,ts\n1,a,5\n2,b,6\n"
    columns = read_csv_columns(io.StringIO(text), schema=SMALL)
    assert set(columns) == {"x", "color", "ts"}
    assert len(columns["x"]) == 2


def test_read_csv_ignores_label_when_asked() -> None:
    columns = read_csv_columns(io.StringIO(CSV_TEXT), schema=SMALL, label="ignore")
    assert "y" not in columns


def test_read_csv_requires_label_when_asked() -> None:
    with pytest.raises(DataError, match="missing columns y"):
        read_csv_columns(io.StringIO("x,color,ts\n1,a,5\n"), schema=SMALL, label="required")


def test_read_csv_non_numeric_value_names_column_and_line() -> None:
    text = "x,color,ts\n1,a,5\n2,b,6\nabc,c,7\n"
    with pytest.raises(DataError, match=r"column 'x', line 4: 'abc' is not a number"):
        read_csv_columns(io.StringIO(text), schema=SMALL)


def test_read_csv_bad_label_names_column_and_line() -> None:
    with pytest.raises(DataError, match=r"column 'y', line 3: class 7"):
        read_csv_columns(io.StringIO("x,color,ts,y\n1,a,5,0\n2,b,6,7\n"), schema=SMALL)


def test_read_csv_short_row_names_line() -> None:
    with pytest.raises(DataError, match="line 3: expected 3 fields, found 2"):
        read_csv_columns(io.StringIO("x,color,ts\n1,a,5\n2,b\n"), schema=SMALL)


def test_read_csv_missing_column_is_named() -> None:
    with pytest.raises(DataError, match="missing columns ts"):
        read_csv_columns(io.StringIO("x,color\n1,a\n"), schema=SMALL)


def test_read_csv_reads_extra_columns_and_gzip_paths(tmp_path: Path) -> None:
    path = tmp_path / "local.csv.gz"
    path.write_bytes(gzip.compress(CSV_TEXT.encode()))
    columns = read_csv_columns(path, schema=SMALL, extra={"unused": "categorical"})
    assert list(columns["unused"]) == ["a", "b", "c"]
    np.testing.assert_array_equal(columns["ts"], [10.0, 20.0, 30.0])


def test_read_csv_missing_file_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_csv_columns(tmp_path / "nope.csv", schema=SMALL)


def test_read_csv_shaped_column_from_flat_fields() -> None:
    schema = Schema(
        numeric=("img",), categorical=(), label="y", num_classes=2, shapes={"img": (2, 2)}
    )
    text = "img_0,img_1,img_2,img_3,y\n1,2,3,4,1\n"
    columns = read_csv_columns(io.StringIO(text), schema=schema)
    np.testing.assert_array_equal(columns["img"], [[[1.0, 2.0], [3.0, 4.0]]])


# --- tasks ----------------------------------------------------------------------------------


def test_load_task_returns_named_dataset() -> None:
    assert load_task("digits").name == "digits"


def test_load_task_unknown_name_lists_known_names() -> None:
    with pytest.raises(ConfigError, match=r"\['digits', 'taxi'\]"):
        load_task("mnist")
