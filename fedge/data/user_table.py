"""A user's own table: infer its schema, read it against a known schema, keep both in JSON.

Formats, by suffix: ``.csv``, ``.csv.gz`` (a header row, then one row per example) and
``.tfrecord``, ``.tfrecord.gz`` (``tf.train.Example`` records, see :mod:`fedge.tfrecord`).

:func:`infer_table` decides each column's kind: a column whose non-empty values all parse
as finite numbers is numeric, else categorical (``numeric=``/``categorical=`` override,
``exclude=`` leaves columns out). A TFRecord feature holding the same number ``d > 1`` of
numbers in every example is a numeric column of shape ``(d,)``. The label's distinct values
are sorted (numerically when all are numbers, else as text) and become class ids
``0..k-1``; their texts are the ``label_names``. Rows without a label are dropped.

:func:`read_table` reads a file of the same formats against a schema and label names fixed
earlier (what simulation, the edge daemon and prediction use), so every tool sees the
columns the model was trained on. The schema and label names travel as ``schema.json``
(:func:`save_schema_json`, :func:`load_schema_json`).
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from fedge.data.dataset import Dataset
from fedge.data.tables import canonical_category, flat_field_names
from fedge.errors import ConfigError, DataError
from fedge.fileio import atomic_write_text
from fedge.schema import Schema

__all__ = [
    "SCHEMA_FILE",
    "SCHEMA_FORMAT",
    "TABLE_SUFFIXES",
    "UNSCALED_RANGE",
    "TableFormat",
    "UserTable",
    "infer_table",
    "load_schema_json",
    "read_table",
    "save_schema_json",
    "schema_document",
    "table_format",
]

_LOG = logging.getLogger(__name__)

SCHEMA_FILE = "schema.json"
"""The file name of the schema document in a trainer export and an edge bundle."""

SCHEMA_FORMAT = "fedge-schema/1"
TABLE_SUFFIXES = (".csv", ".csv.gz", ".tfrecord", ".tfrecord.gz")
UNSCALED_RANGE = 100.0
"""A numeric column whose values span more than this is reported as unscaled."""

TableFormat = Literal["csv", "tfrecord"]
_Raw = str | float | int | tuple[Any, ...] | None
"""One field as read: ``None`` (empty), a ``str``, a number or (TFRecord) a tuple."""


@dataclass(frozen=True, eq=False)
class UserTable:
    """A user's table with its inferred schema, the label texts and what looked wrong."""

    schema: Schema
    label_names: tuple[str, ...]
    """Text of each class id: ``label_names[i]`` is the label value of class ``i``."""
    dataset: Dataset
    warnings: tuple[str, ...]
    """Sentences about the data (empty or constant columns, gaps, unscaled numbers)."""


def table_format(path: str | os.PathLike[str]) -> TableFormat:
    """``"csv"`` or ``"tfrecord"`` from the file name; another suffix is a DataError."""
    name = os.fspath(path).lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".tfrecord", ".tfrecord.gz")):
        return "tfrecord"
    raise DataError(
        f"{os.fspath(path)}: unknown table format; expected a file ending in "
        + ", ".join(TABLE_SUFFIXES)
    )


def infer_table(
    path: str | os.PathLike[str],
    *,
    label_column: str,
    numeric: Sequence[str] = (),
    categorical: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> UserTable:
    """Read ``path``, infer its schema and label classes (see the module docstring).

    Raises DataError for an unreadable file, an unknown column named in an option, a column
    named in two options, a ``numeric`` column holding text, a label with fewer than two
    distinct values, or no feature column left.
    """
    order, raw = _read_raw(path)
    _check_options(order, label_column, numeric, categorical, exclude)
    warnings: list[str] = []
    labels_raw = raw[label_column]
    names = [_label_text(v, label_column, i) for i, v in enumerate(labels_raw)]
    keep = [i for i, name in enumerate(names) if name is not None]
    if len(keep) < len(names):
        warnings.append(
            f"dropped {len(names) - len(keep)} of {len(names)} rows with no label "
            f"(column {label_column!r})"
        )
    label_names = _sorted_labels({str(names[i]) for i in keep})
    if len(label_names) < 2:
        raise DataError(
            f"the label column {label_column!r} needs at least 2 distinct values, "
            f"found {list(label_names)}"
        )
    class_of = {name: k for k, name in enumerate(label_names)}
    labels = np.asarray([class_of[str(names[i])] for i in keep], dtype=np.int64)

    kinds: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name in order:
        if name == label_column or name in exclude:
            continue
        values = [raw[name][i] for i in keep]
        if all(v is None for v in values):
            warnings.append(f"column {name!r} is empty in every row; it is left out")
            continue
        forced = "numeric" if name in numeric else "categorical" if name in categorical else None
        kinds[name], shape = _infer_kind(name, values, forced)
        if shape:
            shapes[name] = shape
    schema = _schema(order, kinds, shapes, label_column, len(label_names))
    columns = {
        name: _column(name, [raw[name][i] for i in keep], kinds[name], shapes.get(name, ()))
        for name in schema.features
    }
    warnings += _column_warnings(schema, columns)
    dataset = Dataset(name=_stem(path), schema=schema, columns=columns, labels=labels)
    return UserTable(schema, label_names, dataset, tuple(warnings))


def read_table(
    path: str | os.PathLike[str],
    schema: Schema,
    label_names: Sequence[str],
    *,
    with_label: bool = True,
) -> Dataset:
    """Read ``path`` against ``schema``: its feature (and region/timestamp) columns, and the
    label mapped through ``label_names`` to class ids.

    With ``with_label=False`` the label column is not read (it may be absent) and every
    label of the returned data set is 0, a placeholder for prediction. Rows without a label
    are dropped (a logged warning counts them). Raises DataError for a missing column, a
    numeric field that is not a number, a label value not in ``label_names``, or a
    TFRecord value of the wrong length.
    """
    names = tuple(str(n) for n in label_names)
    if len(names) != schema.num_classes:
        raise ConfigError(f"{len(names)} label names for a schema of {schema.num_classes} classes")
    fmt = table_format(path)
    order, raw = _read_raw(path)
    present = set(order)
    kinds = {n: "numeric" for n in schema.numeric} | {n: "categorical" for n in schema.categorical}
    for extra, kind in ((schema.region, "categorical"), (schema.timestamp, "numeric")):
        if extra is not None and extra not in kinds:
            kinds[extra] = kind
    fields = {
        name: flat_field_names(name, schema.shape_of(name)) if fmt == "csv" else (name,)
        for name in kinds
    }
    missing = [f for name in kinds for f in fields[name] if f not in present]
    if with_label and schema.label not in present:
        missing.append(schema.label)
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DataError(f"{os.fspath(path)}: missing columns {shown}; it has {order[:20]}")
    n = len(raw[order[0]]) if order else 0
    keep = list(range(n))
    labels = np.zeros(n, dtype=np.int64)
    if with_label:
        class_of = {name: k for k, name in enumerate(names)}
        texts = [_label_text(v, schema.label, i) for i, v in enumerate(raw[schema.label])]
        keep = [i for i, t in enumerate(texts) if t is not None]
        if len(keep) < n:
            _LOG.warning(
                "%s: dropped %d of %d rows with no label", os.fspath(path), n - len(keep), n
            )
        unknown = sorted({str(texts[i]) for i in keep} - set(class_of))
        if unknown:
            raise DataError(
                f"{os.fspath(path)}: label values {unknown[:10]} are not among the model's "
                f"classes {list(names)}"
            )
        labels = np.asarray([class_of[str(texts[i])] for i in keep], dtype=np.int64)
    columns: dict[str, NDArray[Any]] = {}
    for name, kind in kinds.items():
        shape = schema.shape_of(name)
        if fmt == "csv" and shape:
            rows = [tuple(raw[f][i] for f in fields[name]) for i in keep]
            values: list[_Raw] = list(rows)
        else:
            values = [raw[name][i] for i in keep]
        columns[name] = _column(name, values, kind, shape)
    return Dataset(name=_stem(path), schema=schema, columns=columns, labels=labels)


def schema_document(schema: Schema, label_names: Sequence[str]) -> dict[str, object]:
    """The JSON document of ``schema.json``: the schema plus the label names."""
    names = [str(n) for n in label_names]
    if len(names) != schema.num_classes:
        raise ConfigError(f"{len(names)} label names for a schema of {schema.num_classes} classes")
    return {"format": SCHEMA_FORMAT, "schema": schema.to_dict(), "label_names": names}


def save_schema_json(
    path: str | os.PathLike[str], schema: Schema, label_names: Sequence[str]
) -> None:
    """Write ``schema.json`` atomically."""
    text = json.dumps(schema_document(schema, label_names), indent=2, sort_keys=True) + "\n"
    atomic_write_text(path, text)


def load_schema_json(path: str | os.PathLike[str]) -> tuple[Schema, tuple[str, ...]]:
    """``(schema, label_names)`` from a ``schema.json`` file; a DataError if it is not one."""
    try:
        with open(path, encoding="utf-8") as stream:
            document = json.load(stream)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the schema {os.fspath(path)}: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != SCHEMA_FORMAT:
        raise DataError(f"{os.fspath(path)} is not a {SCHEMA_FORMAT} document")
    names = document.get("label_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{os.fspath(path)}: label_names must be a list of strings")
    body = document.get("schema")
    try:
        schema = Schema.from_dict(body if isinstance(body, dict) else {})
    except ConfigError as exc:
        raise DataError(f"{os.fspath(path)}: {exc}") from exc
    if len(names) != schema.num_classes:
        raise DataError(
            f"{os.fspath(path)}: {len(names)} label names for {schema.num_classes} classes"
        )
    return schema, tuple(names)


# -- reading ------------------------------------------------------------------------------


def _read_raw(path: str | os.PathLike[str]) -> tuple[list[str], dict[str, list[_Raw]]]:
    """Column names in file order and each column's raw fields."""
    if table_format(path) == "csv":
        return _read_csv(os.fspath(path))
    return _read_tfrecord(os.fspath(path))


def _read_csv(path: str) -> tuple[list[str], dict[str, list[_Raw]]]:
    try:
        if path.lower().endswith(".gz"):
            stream = gzip.open(path, "rt", encoding="utf-8", newline="")  # noqa: SIM115
        else:
            stream = open(path, encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    try:
        with stream:
            reader = csv.reader(stream)
            header = [h.strip() for h in next((row for row in reader if row), [])]
            if not header:
                raise DataError(f"{path} is empty: no header row")
            duplicates = sorted({h for h in header if header.count(h) > 1})
            if duplicates:
                raise DataError(f"{path}: columns named twice in the header: {duplicates}")
            raw: dict[str, list[_Raw]] = {h: [] for h in header}
            cells = [raw[h] for h in header]
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}, line {reader.line_num}: expected {len(header)} fields, "
                        f"found {len(row)}"
                    )
                for cell, text in zip(cells, row, strict=True):
                    value = text.strip()
                    cell.append(value if value else None)
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from exc
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return header, raw


def _read_tfrecord(path: str) -> tuple[list[str], dict[str, list[_Raw]]]:
    # protobuf (the tf.train.Example codec) loads only for a TFRecord table.
    from fedge.tfrecord import read_examples

    order: list[str] = []
    raw: dict[str, list[_Raw]] = {}
    for index, example in enumerate(read_examples(path)):
        for name, values in example.items():
            if name not in raw:
                order.append(name)
                raw[name] = [None] * index
            raw[name].append(_tf_value(values, path, name))
        for name in order:
            if len(raw[name]) <= index:
                raw[name].append(None)
    # A protobuf map keeps no order: name order makes the inferred schema reproducible.
    return sorted(order), raw


def _tf_value(values: Iterable[Any], path: str, name: str) -> _Raw:
    items = list(values)
    if items and isinstance(items[0], bytes):
        try:
            items = [v.decode("utf-8").strip() for v in items]
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: feature {name!r} holds bytes that are not UTF-8") from exc
        items = [v for v in items if v] if len(items) == 1 else items
    if not items:
        return None
    if len(items) == 1:
        value: _Raw = items[0]
        return value
    return tuple(items)


# -- inference ----------------------------------------------------------------------------


def _check_options(
    order: Sequence[str],
    label: str,
    numeric: Sequence[str],
    categorical: Sequence[str],
    exclude: Sequence[str],
) -> None:
    present = set(order)
    if label not in present:
        raise DataError(f"no label column {label!r}; the file has {list(order)[:20]}")
    for option, names in (("numeric", numeric), ("categorical", categorical), ("exclude", exclude)):
        unknown = sorted(set(names) - present)
        if unknown:
            raise DataError(f"--{option} names columns the file does not have: {unknown}")
        if label in names:
            raise DataError(f"--{option} names the label column {label!r}")
    named = {"numeric": set(numeric), "categorical": set(categorical), "exclude": set(exclude)}
    for a, b in (("numeric", "categorical"), ("numeric", "exclude"), ("categorical", "exclude")):
        both = sorted(named[a] & named[b])
        if both:
            raise DataError(f"columns named in both --{a} and --{b}: {both}")


def _infer_kind(
    name: str, values: Sequence[_Raw], forced: str | None
) -> tuple[str, tuple[int, ...]]:
    present = [v for v in values if v is not None]
    lengths = {len(v) if isinstance(v, tuple) else 1 for v in present}
    if len(lengths) > 1:
        raise DataError(
            f"column {name!r} holds lists of different lengths {sorted(lengths)[:5]}; "
            "exclude the column to leave it out"
        )
    length = lengths.pop()
    flat = [x for v in present for x in (v if isinstance(v, tuple) else (v,))]
    is_number = all(_number(x) is not None for x in flat)
    if length > 1:
        if forced == "categorical" or not is_number:
            raise DataError(
                f"column {name!r} holds lists of {length} values; only lists of numbers are "
                f"supported (a numeric column of shape ({length},)); exclude the column to leave "
                "it out"
            )
        return "numeric", (length,)
    if forced == "numeric" and not is_number:
        bad = next(x for x in flat if _number(x) is None)
        raise DataError(f"column {name!r} is declared numeric but holds {bad!r}")
    return forced or ("numeric" if is_number else "categorical"), ()


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _schema(
    order: Sequence[str],
    kinds: Mapping[str, str],
    shapes: Mapping[str, tuple[int, ...]],
    label: str,
    num_classes: int,
) -> Schema:
    numeric = tuple(n for n in order if kinds.get(n) == "numeric")
    categorical = tuple(n for n in order if kinds.get(n) == "categorical")
    if not numeric and not categorical:
        raise DataError("no feature column is left beside the label")
    return Schema(
        numeric=numeric,
        categorical=categorical,
        label=label,
        num_classes=num_classes,
        shapes=dict(shapes),
    )


def _label_text(value: _Raw, column: str, row: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, tuple):
        raise DataError(f"label column {column!r}, row {row}: holds {len(value)} values, not one")
    return _category(value)


def _category(value: _Raw) -> str | None:
    if value is None:
        return None
    if isinstance(value, tuple):
        raise DataError("a categorical field holds a list of values")
    if isinstance(value, float):
        # TFRecord floats are float32: print the shortest text of that precision.
        return canonical_category(str(np.float32(value)))
    return canonical_category(str(value))


def _sorted_labels(names: set[str]) -> tuple[str, ...]:
    if all(_number(n) is not None for n in names):
        return tuple(sorted(names, key=lambda n: (float(n), n)))
    return tuple(sorted(names))


def _column(name: str, values: Sequence[_Raw], kind: str, shape: tuple[int, ...]) -> NDArray[Any]:
    if kind == "categorical":
        out = np.empty(len(values), dtype=object)
        out[:] = [_category(v) for v in values]
        return out
    size = math.prod(shape)
    rows: list[list[float]] = []
    for row, value in enumerate(values):
        items = value if isinstance(value, tuple) else (value,)
        if value is None:
            items = (None,) * size
        if len(items) != size:
            raise DataError(
                f"column {name!r}, row {row}: {len(items)} values, expected {size} (shape {shape})"
            )
        parsed = []
        for item in items:
            number = math.nan if item is None else _number(item)
            if number is None:
                raise DataError(f"column {name!r}, row {row}: {item!r} is not a finite number")
            parsed.append(number)
        rows.append(parsed)
    return np.asarray(rows, dtype=np.float64).reshape((len(values), *shape))


def _column_warnings(schema: Schema, columns: Mapping[str, NDArray[Any]]) -> list[str]:
    warnings: list[str] = []
    n = len(next(iter(columns.values())))
    gaps = np.zeros(n, dtype=bool)
    gap_columns: list[str] = []
    for name in schema.features:
        column = columns[name]
        if name in schema.numeric:
            missing = np.isnan(column.reshape(n, -1)).any(axis=1)
        else:
            missing = np.asarray([v is None for v in column], dtype=bool)
        if missing.any():
            gap_columns.append(name)
            gaps |= missing
    if gaps.any():
        warnings.append(
            f"{int(gaps.sum())} of {n} rows have empty fields (columns {', '.join(gap_columns)}); "
            "an empty number is filled with the training mean, an empty category goes to the "
            "out-of-vocabulary bucket"
        )
    for name in schema.features:
        column = columns[name]
        if name in schema.numeric:
            low, high = float(np.nanmin(column)), float(np.nanmax(column))
            if low == high:
                warnings.append(
                    f"column {name!r} holds the single value {low:g} in every row that has one; "
                    "it carries no information"
                )
            elif high - low > UNSCALED_RANGE:
                warnings.append(
                    f"column {name!r} spans {low:g}..{high:g} (unscaled); it will be "
                    "standardized (z-score from the training split) before the model sees it"
                )
        else:
            distinct = {v for v in column if v is not None}
            if len(distinct) == 1:
                warnings.append(
                    f"column {name!r} holds the single value {distinct.pop()!r} in every row "
                    "that has one; it carries no information"
                )
    return warnings


def _stem(path: str | os.PathLike[str]) -> str:
    name = os.path.basename(os.fspath(path))
    for suffix in sorted(TABLE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "table"
    return name
