"""Reading raw columns from CSV files: one reader for the cloud, the simulation and the edge.

The reader follows the raw column conventions of :class:`fedge.schema.Schema`: numeric
columns become ``float64`` arrays with ``NaN`` for an empty field, categorical columns become
``object`` arrays of ``str`` with ``None`` for an empty field. A numeric column with a
per-example shape (``schema.shapes``) is stored in ``prod(shape)`` consecutive CSV fields
named ``<name>_0``, ``<name>_1``, ... in row-major order (see :func:`flat_field_names`).
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import numpy as np
from numpy.typing import NDArray

from fedge.errors import ConfigError, DataError
from fedge.schema import Schema

__all__ = [
    "ColumnKind",
    "CsvSource",
    "LabelPolicy",
    "canonical_category",
    "flat_field_names",
    "read_csv_columns",
]

ColumnKind = Literal["numeric", "categorical"]
LabelPolicy = Literal["required", "optional", "ignore"]
CsvSource = str | os.PathLike[str] | TextIO

_INTEGRAL_FLOAT = re.compile(r"([+-]?\d+)\.0*")


@dataclass(frozen=True)
class _Column:
    name: str
    kind: ColumnKind | Literal["label"]
    shape: tuple[int, ...]
    fields: tuple[str, ...]


def flat_field_names(name: str, shape: tuple[int, ...]) -> tuple[str, ...]:
    """CSV field names holding column ``name`` of per-example ``shape`` (row-major order)."""
    if not shape:
        return (name,)
    return tuple(f"{name}_{i}" for i in range(math.prod(shape)))


def canonical_category(text: str) -> str | None:
    """A categorical CSV field as stored: stripped, ``None`` when empty, ``"8.0"`` -> ``"8"``.

    Integer-valued floats are normalised because exporters disagree on whether an integer
    code column is written as ``8`` or ``8.0``; leading zeros are kept (``"02134"`` is a code).
    """
    value = text.strip()
    if not value:
        return None
    match = _INTEGRAL_FLOAT.fullmatch(value)
    return match.group(1) if match else value


def read_csv_columns(
    source: CsvSource,
    *,
    schema: Schema,
    extra: Mapping[str, ColumnKind] | None = None,
    label: LabelPolicy = "optional",
    fieldnames: Sequence[str] | None = None,
) -> dict[str, NDArray[Any]]:
    """Read the columns ``schema`` names (features, region, timestamp) plus ``extra`` from CSV.

    ``source`` is a path (``.gz`` files are decompressed) or an open text stream. The first
    row is the header unless ``fieldnames`` gives the names of a header-less file. Columns the
    file has but nobody asked for are ignored.

    The label column ``schema.label`` is read according to ``label``: ``"required"`` (a file
    without it is a :class:`DataError`), ``"optional"`` (read when the header has it, which
    lets the edge client read unlabelled local files with the same code) or ``"ignore"``.
    When read, it is returned under the key ``schema.label`` as ``int64`` class ids; callers
    that build a :class:`~fedge.data.Dataset` use ``Dataset.from_columns``, which takes it out.

    Raises DataError for an unreadable file, a missing column, a row with the wrong number of
    fields, a non-numeric value in a numeric column or a bad label (naming column and line).
    """
    if label not in ("required", "optional", "ignore"):
        raise ConfigError(f"label must be 'required', 'optional' or 'ignore', got {label!r}")
    wanted = _wanted_columns(schema, extra or {})
    with _open_text(source) as stream:
        reader = csv.reader(stream)
        header = _header(reader, fieldnames, source)
        columns = _select(wanted, header, schema, label)
        positions = {name: i for i, name in enumerate(header)}
        raw: dict[str, list[object]] = {c.name: [] for c in columns}
        try:
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"line {reader.line_num}: expected {len(header)} fields, found {len(row)}"
                    )
                for column in columns:
                    raw[column.name].append(
                        _parse(column, row, positions, reader.line_num, schema.num_classes)
                    )
        except csv.Error as exc:
            raise DataError(f"line {reader.line_num}: malformed CSV: {exc}") from exc
    return {c.name: _to_array(c, raw[c.name]) for c in columns}


def _wanted_columns(schema: Schema, extra: Mapping[str, ColumnKind]) -> dict[str, ColumnKind]:
    wanted: dict[str, ColumnKind] = {name: "numeric" for name in schema.numeric}
    wanted.update({name: "categorical" for name in schema.categorical})
    if schema.region is not None and schema.region not in wanted:
        wanted[schema.region] = "categorical"
    if schema.timestamp is not None and schema.timestamp not in wanted:
        wanted[schema.timestamp] = "numeric"
    for name, kind in extra.items():
        if kind not in ("numeric", "categorical"):
            raise ConfigError(f"extra column {name!r}: kind must be numeric or categorical")
        if name == schema.label:
            raise ConfigError(f"{name!r} is the label; use the label policy, not extra")
        if wanted.setdefault(name, kind) != kind:
            raise ConfigError(f"extra column {name!r} is {wanted[name]} in the schema, not {kind}")
    return wanted


@contextmanager
def _open_text(source: CsvSource) -> Iterator[TextIO]:
    if not isinstance(source, str | os.PathLike):
        yield source
        return
    path = os.fspath(source)
    try:
        if path.endswith(".gz"):
            stream: TextIO = gzip.open(path, "rt", encoding="utf-8", newline="")  # noqa: SIM115
        else:
            stream = open(path, encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    try:
        with stream:
            yield stream
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _header(
    reader: Iterator[list[str]], fieldnames: Sequence[str] | None, source: CsvSource
) -> list[str]:
    if fieldnames is not None:
        header = [str(name) for name in fieldnames]
    else:
        try:
            header = next((row for row in reader if row), [])
        except csv.Error as exc:
            raise DataError(f"malformed CSV header: {exc}") from exc
        header = [name.strip() for name in header]
        if not header:
            raise DataError(f"{_describe(source)} is empty: no header row")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DataError(f"columns named twice in the header: {duplicates}")
    return header


def _select(
    wanted: Mapping[str, ColumnKind], header: Sequence[str], schema: Schema, label: LabelPolicy
) -> list[_Column]:
    present = set(header)
    columns = [
        _Column(name, kind, schema.shape_of(name), flat_field_names(name, schema.shape_of(name)))
        for name, kind in wanted.items()
    ]
    if label == "required" or (label == "optional" and schema.label in present):
        columns.append(_Column(schema.label, "label", (), (schema.label,)))
    missing = [f for c in columns for f in c.fields if f not in present]
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DataError(f"missing columns {shown}; the header has {list(header)[:20]}")
    return columns


def _parse(
    column: _Column, row: Sequence[str], positions: Mapping[str, int], line: int, classes: int
) -> object:
    if column.kind == "categorical":
        return canonical_category(row[positions[column.name]])
    if column.kind == "label":
        return _parse_label(row[positions[column.name]], column.name, line, classes)
    values = [_parse_number(row[positions[f]], column.name, line) for f in column.fields]
    return values if column.shape else values[0]


def _parse_number(text: str, name: str, line: int) -> float:
    value = text.strip()
    if not value:
        return math.nan
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"column {name!r}, line {line}: {value!r} is not a number") from None
    if math.isinf(number):
        raise DataError(f"column {name!r}, line {line}: {value!r} is not a finite number")
    return number


def _parse_label(text: str, name: str, line: int, classes: int) -> int:
    value = text.strip()
    if not value:
        raise DataError(f"column {name!r}, line {line}: the label is missing")
    match = _INTEGRAL_FLOAT.fullmatch(value)
    try:
        label = int(match.group(1) if match else value)
    except ValueError:
        raise DataError(
            f"column {name!r}, line {line}: {value!r} is not an integer class id"
        ) from None
    if not 0 <= label < classes:
        raise DataError(f"column {name!r}, line {line}: class {label} is outside 0..{classes - 1}")
    return label


def _to_array(column: _Column, values: list[object]) -> NDArray[Any]:
    if column.kind == "categorical":
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array
    if column.kind == "label":
        return np.asarray(values, dtype=np.int64).reshape(len(values))
    return np.asarray(values, dtype=np.float64).reshape((len(values), *column.shape))


def _describe(source: CsvSource) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return "the CSV stream"
