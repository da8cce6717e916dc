"""Local data ingestion: a directory of CSV/.npz files, each a span, picked up as they appear."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edge_client.local_data import DirectoryData, MemoryData, read_table
from fedge.data import DIGITS_SCHEMA, TAXI_SCHEMA, flat_field_names, load_digits
from fedge.errors import DataError
from fedge.schema import Schema
from tests.support.edge import taxi_rows, write_csv

DIGITS = load_digits()


def _write_digits_csv(path: Path, start: int, count: int) -> None:
    pixels = DIGITS.columns["pixels"][start : start + count].reshape(count, -1)
    header = [*flat_field_names("pixels", (8, 8)), "digit"]
    lines = [",".join(header)]
    for row, label in zip(pixels, DIGITS.labels[start : start + count], strict=True):
        lines.append(",".join(f"{v:g}" for v in row) + f",{label}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000_000.0

    def __call__(self) -> float:
        return self.now


def _data(directory: Path, **kwargs: object) -> DirectoryData:
    options: dict[str, object] = {"settle_seconds": 0, **kwargs}
    return DirectoryData(directory, DIGITS_SCHEMA, **options)  # type: ignore[arg-type]


def test_each_file_is_a_span_split_into_train_and_holdout(tmp_path: Path) -> None:
    _write_digits_csv(tmp_path / "a.csv", 0, 50)
    _write_digits_csv(tmp_path / "b.csv", 50, 30)
    data = _data(tmp_path)
    assert data.refresh() == ["a.csv", "b.csv"]
    assert [s.name for s in data.spans] == ["a.csv", "b.csv"]
    assert [(len(s.train), len(s.holdout)) for s in data.spans] == [(40, 10), (24, 6)]
    assert len(data.train()) == 64
    assert len(data.holdout()) == 16
    assert len(data.everything()) == 80
    np.testing.assert_array_equal(np.sort(data.everything().labels), np.sort(DIGITS.labels[:80]))


def test_file_dropped_later_becomes_a_new_span_and_keeps_old_holdouts(tmp_path: Path) -> None:
    _write_digits_csv(tmp_path / "a.csv", 0, 50)
    data = _data(tmp_path)
    data.refresh()
    holdout_before = data.holdout().fingerprint()
    assert data.refresh() == []
    _write_digits_csv(tmp_path / "b.csv", 50, 40)
    assert data.refresh() == ["b.csv"]
    assert len(data.train()) == 40 + 32
    assert data.spans[0].holdout.fingerprint() == holdout_before


def test_split_is_deterministic_per_seed(tmp_path: Path) -> None:
    _write_digits_csv(tmp_path / "a.csv", 0, 60)
    first, again, other = _data(tmp_path, seed=1), _data(tmp_path, seed=1), _data(tmp_path, seed=2)
    for data in (first, again, other):
        data.refresh()
    assert first.holdout().fingerprint() == again.holdout().fingerprint()
    assert first.holdout().fingerprint() != other.holdout().fingerprint()


def test_a_file_still_being_written_waits_until_it_settles(tmp_path: Path) -> None:
    clock = Clock()
    data = _data(tmp_path, settle_seconds=2.0, clock=clock)
    _write_digits_csv(tmp_path / "a.csv", 0, 20)
    os.utime(tmp_path / "a.csv", (clock.now - 1.0, clock.now - 1.0))
    assert data.refresh() == []
    clock.now += 1.5
    assert data.refresh() == ["a.csv"]


def test_hidden_temporary_and_other_files_are_ignored(tmp_path: Path) -> None:
    _write_digits_csv(tmp_path / "a.csv", 0, 20)
    (tmp_path / ".b.csv.tmp").write_text("partial")
    (tmp_path / "c.csv.part").write_text("partial")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub.csv").mkdir()
    data = _data(tmp_path)
    assert data.refresh() == ["a.csv"]


def test_changed_file_is_read_again_and_removed_file_dropped(tmp_path: Path) -> None:
    _write_digits_csv(tmp_path / "a.csv", 0, 20)
    _write_digits_csv(tmp_path / "b.csv", 20, 20)
    data = _data(tmp_path)
    data.refresh()
    _write_digits_csv(tmp_path / "a.csv", 0, 30)
    (tmp_path / "b.csv").unlink()
    assert sorted(data.refresh()) == ["a.csv", "b.csv"]
    assert [(s.name, s.rows) for s in data.spans] == [("a.csv", 30)]


def test_unlabelled_or_broken_files_are_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_digits_csv(tmp_path / "good.csv", 0, 20)
    (tmp_path / "broken.csv").write_text("pixels_0,digit\n1,2\n")
    data = _data(tmp_path)
    assert data.refresh() == ["good.csv"]
    assert data.refresh() == []
    assert caplog.text.count("skipping data file broken.csv") == 1


def test_npz_files_read_like_csv(tmp_path: Path) -> None:
    _write_digits_csv(tmp_path / "a.csv", 0, 25)
    np.savez(tmp_path / "a.npz", pixels=DIGITS.columns["pixels"][:25], digit=DIGITS.labels[:25])
    from_csv, from_npz = (
        read_table(tmp_path / "a.csv", DIGITS_SCHEMA),
        read_table(tmp_path / "a.npz", DIGITS_SCHEMA),
    )
    assert from_csv.fingerprint() == from_npz.fingerprint()


def test_taxi_npz_categoricals_are_strings_with_empty_as_missing(tmp_path: Path) -> None:
    write_csv(tmp_path / "t.csv", taxi_rows(0, 30))
    table = read_table(tmp_path / "t.csv", TAXI_SCHEMA)
    arrays = {
        name: np.array(["" if v is None else v for v in column])
        if column.dtype == object
        else column
        for name, column in table.columns.items()
    }
    np.savez(tmp_path / "t.npz", big_tipper=table.labels, **arrays)
    assert read_table(tmp_path / "t.npz", TAXI_SCHEMA).fingerprint() == table.fingerprint()


def test_missing_directory_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        _data(tmp_path / "nope").refresh()


def test_memory_data_serves_fixed_tables() -> None:
    data = MemoryData(DIGITS.take(np.arange(10)), DIGITS.take(np.arange(10, 14)))
    assert data.refresh() == []
    assert (len(data.train()), len(data.holdout()), len(data.everything())) == (10, 4, 14)


def test_taxi_csv_in_the_projects_own_format_is_labelled_like_the_cloud_loader(
    tmp_path: Path,
) -> None:
    """The bundled taxi CSV has ``tips`` and ``fare`` but no ``big_tipper``: the daemon's
    reader labels it as ``load_taxi`` does (and predict, which needs no label, reads it too)."""
    import gzip
    from importlib import resources

    from edge_client.local_data import read_columns
    from fedge.data import load_taxi

    bundled = resources.files("fedge").joinpath("datasets", "taxi.csv").read_text()
    head = "\n".join(bundled.splitlines()[:301]) + "\n"
    (tmp_path / "trips.csv").write_text(head)
    with gzip.open(tmp_path / "more.csv.gz", "wt") as stream:
        stream.write(head)
    data = DirectoryData(tmp_path, TAXI_SCHEMA, holdout_fraction=0.2, settle_seconds=0)
    assert data.refresh() == ["more.csv.gz", "trips.csv"]
    table = read_table(tmp_path / "trips.csv", TAXI_SCHEMA)
    reference = load_taxi(tmp_path / "trips.csv")
    assert len(table) == len(reference) == 300
    np.testing.assert_array_equal(table.labels, reference.labels)
    assert set(table.columns) == set(reference.columns)
    assert len(data.train()) + len(data.holdout()) == 600
    unlabelled = read_columns(tmp_path / "trips.csv", TAXI_SCHEMA, label="optional")
    assert TAXI_SCHEMA.label not in unlabelled
    assert len(unlabelled["fare"]) == 300


def test_taxi_rows_missing_tips_are_skipped_not_the_file(tmp_path: Path) -> None:
    bundled = (Path(__file__).parents[2] / "fedge" / "datasets" / "taxi.csv").read_text()
    lines = bundled.splitlines()[:51]
    header = lines[0].split(",")
    tips = header.index("tips")
    broken = lines[1].split(",")
    broken[tips] = ""
    (tmp_path / "trips.csv").write_text("\n".join([lines[0], ",".join(broken), *lines[2:]]) + "\n")
    table = read_table(tmp_path / "trips.csv", TAXI_SCHEMA)
    assert len(table) == 49
    assert set(np.unique(table.labels)) <= {0, 1}


_USER_SCHEMA = Schema(numeric=("size",), categorical=("colour",), label="verdict", num_classes=2)


def test_tfrecord_and_text_labelled_csv_spans_read_with_the_bundles_label_names(
    tmp_path: Path,
) -> None:
    from fedge.tfrecord import write_examples

    names = ("no", "yes")
    rows = [(1.5, "red", "yes"), (None, "blue", "no"), (3.0, None, "yes"), (0.5, "red", "no")]
    examples = []
    for size, colour, verdict in rows:
        example: dict[str, object] = {"verdict": [verdict]}
        if size is not None:
            example["size"] = [size]
        if colour is not None:
            example["colour"] = [colour]
        examples.append(example)
    write_examples(tmp_path / "a.tfrecord", examples)  # type: ignore[arg-type]
    lines = ["size,colour,verdict"] + [
        f"{'' if s is None else s},{c or ''},{v}" for s, c, v in rows
    ]
    (tmp_path / "b.csv").write_text("\n".join(lines) + "\n")
    data = DirectoryData(
        tmp_path, _USER_SCHEMA, holdout_fraction=0.0, settle_seconds=0, label_names=names
    )
    assert data.refresh() == ["a.tfrecord", "b.csv"]
    train = data.train()
    np.testing.assert_array_equal(train.labels, [1, 0, 1, 0] * 2)
    assert list(train.columns["colour"]) == ["red", "blue", None, "red"] * 2
    assert np.isnan(train.columns["size"][1])
    without = DirectoryData(tmp_path, _USER_SCHEMA, settle_seconds=0)
    assert without.refresh() == []  # text labels need the bundle's label names
