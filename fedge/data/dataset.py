"""A task's raw data in memory: schema-checked columns plus int64 labels."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedge.errors import DataError
from fedge.schema import Schema

__all__ = ["Dataset"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """Raw columns of ``n`` examples and their labels, validated against ``schema``.

    ``columns`` holds every feature column of the schema, the region and timestamp columns
    when the schema names them, and may hold further columns (but never the label, which
    lives in ``labels``). Arrays are copied at construction and made read-only, so a data
    set never changes after it is built; compare two data sets with :meth:`fingerprint`.
    """

    name: str
    schema: Schema
    columns: Mapping[str, NDArray[Any]]
    labels: NDArray[np.int64]

    def __post_init__(self) -> None:
        labels = np.array(self.labels, copy=True)
        if labels.ndim != 1 or not (labels.dtype.kind in "iu" or labels.size == 0):
            raise DataError(
                f"labels must be a 1-D integer array, got dtype {labels.dtype} "
                f"and shape {labels.shape}"
            )
        labels = labels.astype(np.int64)
        n = labels.shape[0]
        if n and (labels.min() < 0 or labels.max() >= self.schema.num_classes):
            raise DataError(
                f"labels must lie in 0..{self.schema.num_classes - 1}, "
                f"found {int(labels.min())}..{int(labels.max())}"
            )
        if self.schema.label in self.columns:
            raise DataError(f"the label {self.schema.label!r} must not also be a column")
        columns = {str(k): _frozen_copy(v) for k, v in self.columns.items()}
        for name, column in columns.items():
            if column.ndim == 0 or column.shape[0] != n:
                raise DataError(
                    f"column {name!r} has {column.shape[0] if column.ndim else 0} rows, "
                    f"the labels have {n}"
                )
        _check_schema_columns(self.schema, columns)
        labels.flags.writeable = False
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "columns", MappingProxyType(columns))

    @classmethod
    def from_columns(
        cls, *, name: str, schema: Schema, columns: Mapping[str, NDArray[Any]]
    ) -> Dataset:
        """Build a data set from reader output that holds the label under ``schema.label``."""
        if schema.label not in columns:
            raise DataError(f"the data has no label column {schema.label!r}")
        rest = {k: v for k, v in columns.items() if k != schema.label}
        return cls(name=name, schema=schema, columns=rest, labels=columns[schema.label])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def features(self) -> Mapping[str, NDArray[Any]]:
        """The feature columns only, in schema order (numeric, then categorical)."""
        return MappingProxyType({name: self.columns[name] for name in self.schema.features})

    def take(self, indices: NDArray[np.integer[Any]]) -> Dataset:
        """A new data set holding the examples at ``indices`` (in that order), copied."""
        idx = np.asarray(indices)
        if idx.ndim != 1 or not (idx.dtype.kind in "iu" or idx.size == 0):
            raise DataError(f"indices must be a 1-D integer array, got shape {idx.shape}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise DataError(f"indices must lie in 0..{len(self) - 1} for {len(self)} examples")
        return Dataset(
            name=self.name,
            schema=self.schema,
            columns={k: v[idx] for k, v in self.columns.items()},
            labels=self.labels[idx],
        )

    def fingerprint(self) -> str:
        """sha256 (hex) of schema, columns and labels; stable across runs and dict order.

        The name is left out: two data sets holding the same examples share a fingerprint.
        """
        digest = hashlib.sha256()
        digest.update(json.dumps(self.schema.to_dict(), sort_keys=True).encode())
        for name in sorted(self.columns):
            _update(digest, name.encode())
            _update_array(digest, self.columns[name])
        _update(digest, b"\x00labels")
        _update_array(digest, self.labels)
        return digest.hexdigest()


def _frozen_copy(value: NDArray[Any]) -> NDArray[Any]:
    array = np.array(value, copy=True)
    array.flags.writeable = False
    return array


def _check_schema_columns(schema: Schema, columns: Mapping[str, NDArray[Any]]) -> None:
    required = list(schema.features)
    for extra in (schema.region, schema.timestamp):
        if extra is not None and extra not in required:
            required.append(extra)
    missing = [name for name in required if name not in columns]
    if missing:
        raise DataError(f"columns missing for the schema: {missing}")
    numeric = set(schema.numeric)
    if schema.timestamp is not None and schema.timestamp not in schema.categorical:
        numeric.add(schema.timestamp)
    for name in required:
        column = columns[name]
        if name in numeric:
            expected = schema.shape_of(name)
            if column.dtype != np.float64 or column.shape[1:] != expected:
                raise DataError(
                    f"numeric column {name!r} must be float64 with per-example shape "
                    f"{expected}, got {column.dtype} with {column.shape[1:]}"
                )
        else:
            _check_categorical(name, column)
    for name, column in columns.items():
        if name not in required and column.dtype != np.float64:
            _check_categorical(name, column)


def _check_categorical(name: str, column: NDArray[Any]) -> None:
    if column.dtype != object or column.ndim != 1:
        raise DataError(
            f"categorical column {name!r} must be a 1-D object array of str/None, "
            f"got {column.dtype} with shape {column.shape}"
        )
    bad = next((v for v in column if v is not None and not isinstance(v, str)), None)
    if bad is not None:
        raise DataError(
            f"categorical column {name!r} holds {type(bad).__name__} {bad!r}; expected str or None"
        )


def _update(digest: hashlib._Hash, data: bytes) -> None:
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


def _update_array(digest: hashlib._Hash, array: NDArray[Any]) -> None:
    _update(digest, f"{array.dtype.kind}{array.shape}".encode())
    if array.dtype == object:
        for value in array:
            _update(digest, b"\x00" if value is None else b"\x01" + str(value).encode())
        return
    if array.dtype.kind == "f":
        # Every NaN hashes alike whatever its payload bits.
        array = np.where(np.isnan(array), np.nan, array)
    _update(digest, np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"))).tobytes())
