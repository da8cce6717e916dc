"""A user's own table: schema inference, reading against a schema, schema.json, TFRecord."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from fedge.data import SCHEMA_FILE, infer_table, load_schema_json, read_table, save_schema_json
from fedge.errors import ConfigError, DataError
from fedge.schema import Schema
from fedge.tfrecord import crc32c, iter_records, read_examples, write_examples, write_records

CSV = """\
age,city,score,empty,const,grade
31,Paris,1.5,,7,B
,Lyon,2.5,,7,A
45,,3.5,,7,C
52,Paris,400,,7,B
29,Nice,0.5,,7,
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_kinds_labels_and_columns_are_inferred(tmp_path: Path) -> None:
    table = infer_table(_write(tmp_path / "people.csv", CSV), label_column="grade")
    assert table.schema.numeric == ("age", "score", "const")
    assert table.schema.categorical == ("city",)
    assert table.schema.label == "grade"
    assert table.label_names == ("A", "B", "C")
    data = table.dataset
    assert len(data) == 4  # the row without a grade is dropped
    np.testing.assert_array_equal(data.labels, [1, 0, 2, 1])
    np.testing.assert_array_equal(data.columns["age"], [31, np.nan, 45, 52])
    assert list(data.columns["city"]) == ["Paris", "Lyon", None, "Paris"]
    assert data.name == "people"


def test_warnings_name_each_problem(tmp_path: Path) -> None:
    warnings = infer_table(_write(tmp_path / "t.csv", CSV), label_column="grade").warnings
    text = "\n".join(warnings)
    assert "dropped 1 of 5 rows with no label (column 'grade')" in text
    assert "column 'empty' is empty in every row; it is left out" in text
    assert "2 of 4 rows have empty fields (columns age, city)" in text
    assert "column 'const' holds the single value 7" in text
    assert "column 'score' spans 1.5..400 (unscaled); it will be standardized" in text
    assert len(warnings) == 5


def test_numeric_labels_sort_numerically_and_integral_floats_merge(tmp_path: Path) -> None:
    text = "x,y\n1,10\n2,9\n3,10.0\n4,2\n"
    table = infer_table(_write(tmp_path / "t.csv", text), label_column="y")
    assert table.label_names == ("2", "9", "10")
    np.testing.assert_array_equal(table.dataset.labels, [2, 1, 2, 0])


def test_options_override_and_exclude(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", CSV)
    table = infer_table(
        path, label_column="grade", categorical=["age"], numeric=["const"], exclude=["score"]
    )
    assert table.schema.numeric == ("const",)
    assert table.schema.categorical == ("age", "city")
    assert list(table.dataset.columns["age"]) == ["31", None, "45", "52"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label_column": "nope"}, "no label column 'nope'"),
        ({"label_column": "grade", "numeric": ["city"]}, "declared numeric but holds 'Paris'"),
        ({"label_column": "grade", "exclude": ["zzz"]}, "--exclude names columns the file"),
        ({"label_column": "grade", "numeric": ["grade"]}, "--numeric names the label column"),
        (
            {"label_column": "grade", "numeric": ["age"], "exclude": ["age"]},
            "both --numeric and --exclude: ['age']",
        ),
        ({"label_column": "const"}, "needs at least 2 distinct values"),
    ],
)
def test_bad_options_are_clear_errors(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(DataError, match=None) as caught:
        infer_table(_write(tmp_path / "t.csv", CSV), **kwargs)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_unknown_suffix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown table format.*\.csv, \.csv\.gz, \.tfrecord"):
        infer_table(_write(tmp_path / "t.txt", CSV), label_column="grade")


def test_read_table_uses_the_known_schema_and_label_names(tmp_path: Path) -> None:
    table = infer_table(_write(tmp_path / "train.csv", CSV), label_column="grade")
    serving = "grade,city,age,score,const,extra\nC,Rome,60,1,7,x\nA,Paris,,2,7,y\n"
    with gzip.open(tmp_path / "serve.csv.gz", "wt", encoding="utf-8") as stream:
        stream.write(serving)
    data = read_table(tmp_path / "serve.csv.gz", table.schema, table.label_names)
    assert data.schema == table.schema
    np.testing.assert_array_equal(data.labels, [2, 0])
    assert list(data.columns["city"]) == ["Rome", "Paris"]
    np.testing.assert_array_equal(data.columns["age"], [60, np.nan])
    assert "extra" not in data.columns


def test_read_table_without_labels_for_prediction(tmp_path: Path) -> None:
    table = infer_table(_write(tmp_path / "train.csv", CSV), label_column="grade")
    path = _write(tmp_path / "new.csv", "city,age,score,const\nLyon,3,4,7\n")
    data = read_table(path, table.schema, table.label_names, with_label=False)
    np.testing.assert_array_equal(data.labels, [0])
    with pytest.raises(DataError, match="missing columns grade"):
        read_table(path, table.schema, table.label_names)


def test_read_table_refuses_an_unknown_label_and_a_missing_column(tmp_path: Path) -> None:
    table = infer_table(_write(tmp_path / "train.csv", CSV), label_column="grade")
    path = _write(tmp_path / "bad.csv", "city,age,score,const,grade\nLyon,3,4,7,Z\n")
    with pytest.raises(DataError, match=r"label values \['Z'\] are not among"):
        read_table(path, table.schema, table.label_names)
    path = _write(tmp_path / "short.csv", "city,age,grade\nLyon,3,A\n")
    with pytest.raises(DataError, match="missing columns score, const"):
        read_table(path, table.schema, table.label_names)
    with pytest.raises(ConfigError, match="2 label names for a schema of 3 classes"):
        read_table(path, table.schema, ("A", "B"))


def test_schema_json_round_trips(tmp_path: Path) -> None:
    schema = Schema(
        numeric=("v", "x"), categorical=("c",), label="y", num_classes=2, shapes={"v": (3,)}
    )
    path = tmp_path / SCHEMA_FILE
    save_schema_json(path, schema, ("no", "yes"))
    assert load_schema_json(path) == (schema, ("no", "yes"))
    document = json.loads(path.read_text())
    assert document["label_names"] == ["no", "yes"]
    assert document["schema"]["shapes"] == {"v": [3]}
    assert Schema.from_json(schema.to_json()) == schema
    with pytest.raises(ConfigError, match="expected a JSON object"):
        Schema.from_json("[1]")
    path.write_text(json.dumps({**document, "label_names": ["a"]}))
    with pytest.raises(DataError, match="1 label names for 2 classes"):
        load_schema_json(path)


def test_crc32c_known_value_and_corruption_detected(tmp_path: Path) -> None:
    assert crc32c(b"123456789") == 0xE3069283
    path = tmp_path / "r.tfrecord"
    assert write_records(path, [b"hello", b"world"]) == 2
    assert list(iter_records(path)) == [b"hello", b"world"]
    data = bytearray(path.read_bytes())
    data[14] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="record 0 fails its checksum"):
        list(iter_records(path))
    path.write_bytes(bytes(data[:20]))
    with pytest.raises(DataError, match="record 0 is truncated"):
        list(iter_records(path))


@pytest.mark.parametrize("suffix", [".tfrecord", ".tfrecord.gz"])
def test_tfrecord_tables_infer_and_read(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    examples = [
        {"x": [float(i) / 2], "c": [b"ab" if i % 2 else b"cd"], "v": [1.0, 2.0, float(i)]}
        | ({"y": [i % 2]} if i != 4 else {})
        for i in range(6)
    ]
    assert write_examples(path, examples) == 6
    assert list(read_examples(path))[1] == {
        "x": [0.5],
        "c": [b"ab"],
        "v": [1.0, 2.0, 1.0],
        "y": [1],
    }
    table = infer_table(path, label_column="y")
    assert table.schema.numeric == ("v", "x")
    assert table.schema.categorical == ("c",)
    assert table.schema.shape_of("v") == (3,)
    assert table.label_names == ("0", "1")
    assert "dropped 1 of 6 rows with no label" in table.warnings[0]
    np.testing.assert_array_equal(table.dataset.columns["v"][:, 2], [0, 1, 2, 3, 5])
    again = read_table(path, table.schema, table.label_names)
    assert again.fingerprint() == table.dataset.fingerprint()
