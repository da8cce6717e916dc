"""Mergeable per-feature statistics of raw columns, computed where the data lives.

An edge device computes :class:`DatasetStats` of its local raw columns and sends them, never
the raw values, to the cloud, which merges the reports of many devices into the statistics
of the whole federation. Merging is exact for every count (missing values, histograms,
category counts, labels) and for min/max; mean and variance merge with the pairwise update
of Chan, Golub and LeVeque (1979), "Updating formulae and a pairwise algorithm for computing
sample variances", exact up to floating-point rounding.

Histograms merge exactly only when every shard uses the same bin edges, so edges never
depend on a shard's data: they come from :class:`StatsConfig` (per column) or default to
:data:`DEFAULT_HISTOGRAM_EDGES`. A histogram with edges ``e[0] < ... < e[k-1]`` has ``k + 1``
counts: ``counts[0]`` holds values ``< e[0]`` (underflow), ``counts[i]`` values in
``[e[i-1], e[i])`` and ``counts[k]`` values ``>= e[k-1]`` (overflow), so no value is dropped.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from fedge.columns import categorical_codes, numeric_values, row_count
from fedge.errors import ConfigError, FeatureError
from fedge.schema import Schema
from fedge.validation import check_int, check_number

__all__ = [
    "DEFAULT_HISTOGRAM_EDGES",
    "DEFAULT_STATS_CONFIG",
    "OTHER_CATEGORY",
    "CategoricalStats",
    "ColumnStats",
    "DatasetStats",
    "NumericStats",
    "StatsConfig",
    "compute_stats",
    "merge_stats",
]

OTHER_CATEGORY = "__other__"
"""The value_counts key that holds the categories folded by ``min_category_count``."""

_FORMAT = "fedge.stats"
_VERSION = 1


def _symmetric_125_edges() -> tuple[float, ...]:
    positive = [float(f"{m}e{k}") for k in range(-3, 9) for m in (1, 2, 5)] + [1e9]
    return (*(-e for e in reversed(positive)), 0.0, *positive)


DEFAULT_HISTOGRAM_EDGES: tuple[float, ...] = _symmetric_125_edges()
"""Data-independent default edges: 0 and +-{1, 2, 5} x 10^k for k = -3..8, then +-1e9.

75 edges (77 bins with under/overflow), symmetric around 0 and log-spaced, so one scheme
resolves fares, miles, seconds and pixel values alike and any two shards merge exactly.
"""


def _edges(values: Sequence[float], what: str, error: type[Exception]) -> tuple[float, ...]:
    try:
        edges = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise error(f"{what}: histogram edges must be numbers: {exc}") from exc
    if not edges:
        raise error(f"{what}: histogram edges must not be empty")
    if not all(math.isfinite(e) for e in edges):
        raise error(f"{what}: histogram edges must be finite, got {edges}")
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise error(f"{what}: histogram edges must be strictly increasing, got {edges}")
    return edges


@dataclass(frozen=True)
class StatsConfig:
    """How :func:`compute_stats` summarises columns.

    ``histogram_edges`` overrides the default edges per numeric column. The privacy knobs
    are for reports that leave a device: categories seen fewer than ``min_category_count``
    times are folded into one :data:`OTHER_CATEGORY` count (a raw value spelled ``__other__``
    is counted there too), and ``include_extremes=False`` leaves min/max out (``None``). The
    defaults keep exact statistics. Folding happens per report: merged folded reports keep
    every count's total but not the identity of values rare on some device.
    """

    histogram_edges: Mapping[str, Sequence[float]] = field(default_factory=dict)
    min_category_count: int = 1
    include_extremes: bool = True

    def __post_init__(self) -> None:
        edges = {
            str(name): _edges(values, f"column {name!r}", ConfigError)
            for name, values in self.histogram_edges.items()
        }
        object.__setattr__(self, "histogram_edges", MappingProxyType(edges))
        check_int(self.min_category_count, "min_category_count", low=1)
        if not isinstance(self.include_extremes, bool):
            raise ConfigError(f"include_extremes must be a bool, got {self.include_extremes!r}")

    def edges_for(self, name: str) -> tuple[float, ...]:
        """The histogram edges of numeric column ``name``."""
        return tuple(self.histogram_edges.get(name, DEFAULT_HISTOGRAM_EDGES))


DEFAULT_STATS_CONFIG = StatsConfig()


def _count(value: object, what: str) -> int:
    """A count in a statistics document (FeatureError when it is not an integer >= 0)."""
    return check_int(value, what, low=0, error=FeatureError)


@dataclass(frozen=True)
class NumericStats:
    """Statistics of one numeric column.

    A multi-dimensional column (per-example ``shape``, e.g. digits' ``(8, 8)`` pixels) is
    pooled over all its elements: ``count`` and ``missing`` count elements, not rows, and
    mean, variance, min, max and the histogram describe every element together. ``m2`` is
    the sum of squared deviations from the mean; an empty column has mean and m2 0.0 and no
    min/max. ``min``/``max`` are also ``None`` when left out for privacy.
    """

    count: int
    missing: int
    mean: float
    m2: float
    min: float | None
    max: float | None
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("count", "missing"):
            set_(self, name, _count(getattr(self, name), name))
        for name in ("mean", "m2"):
            set_(self, name, check_number(getattr(self, name), name, error=FeatureError))
        set_(self, "shape", tuple(_count(d, "a shape dimension") for d in self.shape))
        set_(self, "edges", _edges(self.edges, "numeric statistics", FeatureError))
        set_(self, "counts", tuple(_count(c, "a histogram count") for c in self.counts))
        if len(self.counts) != len(self.edges) + 1 or sum(self.counts) != self.count:
            raise FeatureError(
                f"a histogram of {self.count} values with {len(self.edges)} edges needs "
                f"{len(self.edges) + 1} counts (under/overflow included) summing to {self.count}"
            )
        if self.m2 < 0 or (self.count == 0 and (self.mean != 0.0 or self.m2 != 0.0)):
            raise FeatureError("m2 must be >= 0, and mean and m2 0.0 when there are no values")
        if (self.min is None) != (self.max is None) or (self.count == 0 and self.min is not None):
            raise FeatureError("min and max must both be given or both be None (no values)")
        if self.min is not None and self.max is not None:
            set_(self, "min", check_number(self.min, "min", error=FeatureError))
            set_(self, "max", check_number(self.max, "max", error=FeatureError))
            if self.min > self.max:
                raise FeatureError(f"min {self.min} is greater than max {self.max}")

    @property
    def variance(self) -> float:
        """Population variance of the non-missing values (0.0 when there are none)."""
        return self.m2 / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        """Population standard deviation."""
        return math.sqrt(self.variance)

    def merge(self, other: NumericStats) -> NumericStats:
        """Statistics of the union of both value sets (Chan et al. 1979 for mean and m2)."""
        if self.edges != other.edges:
            raise FeatureError("cannot merge histograms with different bin edges")
        if self.shape != other.shape:
            raise FeatureError(f"cannot merge per-example shapes {self.shape} and {other.shape}")
        n = self.count + other.count
        if other.count == 0:
            mean, m2 = self.mean, self.m2
        elif self.count == 0:
            mean, m2 = other.mean, other.m2
        else:
            delta = other.mean - self.mean
            mean = self.mean + delta * (other.count / n)
            m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / n)
        sides = [s for s in (self, other) if s.count]
        lows = [s.min for s in sides if s.min is not None]
        highs = [s.max for s in sides if s.max is not None]
        known = bool(sides) and len(lows) == len(sides)
        return NumericStats(
            count=n,
            missing=self.missing + other.missing,
            mean=mean,
            m2=m2,
            min=min(lows) if known else None,
            max=max(highs) if known else None,
            edges=self.edges,
            counts=tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            shape=self.shape,
        )


@dataclass(frozen=True)
class CategoricalStats:
    """Statistics of one categorical column: ``value_counts`` (all positive) sums to ``count``."""

    count: int
    missing: int
    value_counts: Mapping[str, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "count", _count(self.count, "count"))
        object.__setattr__(self, "missing", _count(self.missing, "missing"))
        if not all(isinstance(key, str) for key in self.value_counts):
            raise FeatureError(f"category values must be str, got {list(self.value_counts)}")
        counts = {k: _count(self.value_counts[k], repr(k)) for k in sorted(self.value_counts)}
        if sum(counts.values()) != self.count or 0 in counts.values():
            raise FeatureError(f"value_counts must be positive and sum to {self.count}: {counts}")
        object.__setattr__(self, "value_counts", MappingProxyType(counts))

    def merge(self, other: CategoricalStats) -> CategoricalStats:
        """Statistics of the union: counts add (folded :data:`OTHER_CATEGORY` counts too)."""
        counts = dict(self.value_counts)
        for key, value in other.value_counts.items():
            counts[key] = counts.get(key, 0) + value
        return CategoricalStats(
            count=self.count + other.count,
            missing=self.missing + other.missing,
            value_counts=counts,
        )


ColumnStats = NumericStats | CategoricalStats
_FIELDS = {
    "numeric": ("shape", "count", "missing", "mean", "m2", "min", "max", "edges", "counts"),
    "categorical": ("count", "missing", "value_counts"),
}


def _column_to_dict(name: str, stats: ColumnStats) -> dict[str, Any]:
    kind = "numeric" if isinstance(stats, NumericStats) else "categorical"
    doc: dict[str, Any] = {"name": name, "kind": kind}
    for key in _FIELDS[kind]:
        value = getattr(stats, key)
        if isinstance(value, Mapping | tuple):
            value = dict(value) if isinstance(value, Mapping) else list(value)
        doc[key] = value
    return doc


def _column_from_dict(doc: Mapping[str, Any]) -> ColumnStats:
    kind = doc["kind"]
    if kind not in _FIELDS or set(doc) != {"name", "kind", *_FIELDS[kind]}:
        raise FeatureError(f"expected a numeric or categorical column document, got {doc!r}")
    if kind == "numeric":
        return NumericStats(**{key: doc[key] for key in _FIELDS[kind]})
    if not isinstance(doc["value_counts"], Mapping):
        raise FeatureError("value_counts must be an object")
    return CategoricalStats(**{key: doc[key] for key in _FIELDS[kind]})


def _merge_column(a: ColumnStats, b: ColumnStats) -> ColumnStats:
    if isinstance(a, NumericStats) and isinstance(b, NumericStats):
        return a.merge(b)
    if isinstance(a, CategoricalStats) and isinstance(b, CategoricalStats):
        return a.merge(b)
    raise FeatureError("numeric on one side, categorical on the other")


@dataclass(frozen=True)
class DatasetStats:
    """Per-column statistics of a table of ``num_rows`` rows, in schema order.

    ``label_counts[c]`` counts the rows of class ``c`` when labels were given.
    """

    num_rows: int
    columns: Mapping[str, ColumnStats]
    label_counts: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_rows", _count(self.num_rows, "num_rows"))
        for name, stats in self.columns.items():
            if not isinstance(name, str) or not isinstance(stats, NumericStats | CategoricalStats):
                raise FeatureError(f"column {name!r}: not column statistics: {stats!r}")
            width = math.prod(stats.shape) if isinstance(stats, NumericStats) else 1
            if stats.count + stats.missing != self.num_rows * width:
                raise FeatureError(
                    f"column {name!r}: count + missing = {stats.count + stats.missing}, "
                    f"expected {self.num_rows * width} for {self.num_rows} rows"
                )
        object.__setattr__(self, "columns", MappingProxyType(dict(self.columns)))
        if self.label_counts is not None:
            labels = tuple(_count(c, "a label count") for c in self.label_counts)
            if sum(labels) != self.num_rows:
                raise FeatureError(f"label_counts sum to {sum(labels)}, not {self.num_rows} rows")
            object.__setattr__(self, "label_counts", labels)

    def numeric(self, name: str) -> NumericStats:
        """The statistics of numeric column ``name`` (FeatureError when there are none)."""
        stats = self.columns.get(name)
        if not isinstance(stats, NumericStats):
            raise FeatureError(f"the statistics have no numeric column {name!r}")
        return stats

    def categorical(self, name: str) -> CategoricalStats:
        """The statistics of categorical column ``name`` (FeatureError when there are none)."""
        stats = self.columns.get(name)
        if not isinstance(stats, CategoricalStats):
            raise FeatureError(f"the statistics have no categorical column {name!r}")
        return stats

    def merge(self, other: DatasetStats) -> DatasetStats:
        """Statistics of both tables together; associative, and exact for every count."""
        if set(self.columns) != set(other.columns):
            raise FeatureError(
                f"cannot merge statistics of columns {list(self.columns)} "
                f"with statistics of columns {list(other.columns)}"
            )
        mine, theirs = self.label_counts, other.label_counts
        if (mine is None) != (theirs is None) or len(mine or ()) != len(theirs or ()):
            raise FeatureError(f"cannot merge label counts {mine} and {theirs}")
        merged: dict[str, ColumnStats] = {}
        for name, a in self.columns.items():
            b = other.columns[name]
            try:
                merged[name] = _merge_column(a, b)
            except FeatureError as exc:
                raise FeatureError(f"column {name!r}: {exc}") from exc
        labels = None
        if mine is not None and theirs is not None:
            labels = tuple(x + y for x, y in zip(mine, theirs, strict=True))
        return DatasetStats(self.num_rows + other.num_rows, merged, labels)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able document; floats are kept whole, so ``json`` round-trips them exactly."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "num_rows": self.num_rows,
            "label_counts": None if self.label_counts is None else list(self.label_counts),
            "columns": [_column_to_dict(name, stats) for name, stats in self.columns.items()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetStats:
        """Rebuild statistics from :meth:`to_dict`'s document; FeatureError when it is invalid."""
        try:
            if (data["format"], data["version"]) != (_FORMAT, _VERSION):
                raise FeatureError(f"expected format {_FORMAT!r} version {_VERSION}")
            columns: dict[str, ColumnStats] = {}
            for doc in data["columns"]:
                if not isinstance(doc["name"], str) or doc["name"] in columns:
                    raise FeatureError(f"column names must be unique strings: {doc['name']!r}")
                columns[doc["name"]] = _column_from_dict(doc)
            labels = data["label_counts"]
            return cls(data["num_rows"], columns, None if labels is None else tuple(labels))
        except FeatureError as exc:
            raise FeatureError(f"not a valid statistics document: {exc}") from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FeatureError(f"not a valid statistics document: {exc!r}") from exc


def merge_stats(a: DatasetStats, b: DatasetStats) -> DatasetStats:
    """Statistics of two tables together (see :meth:`DatasetStats.merge`)."""
    return a.merge(b)


def _numeric_stats(
    values: npt.NDArray[np.float64], *, edges: tuple[float, ...], extremes: bool
) -> NumericStats:
    flat = values.reshape(-1)
    present = flat[~np.isnan(flat)]
    count = int(present.size)
    mean = float(np.mean(present)) if count else 0.0
    m2 = float(np.sum(np.square(present - mean))) if count else 0.0
    bins = np.searchsorted(np.asarray(edges), present, side="right")
    counts = np.bincount(bins, minlength=len(edges) + 1)
    keep = extremes and count > 0
    return NumericStats(
        count=count,
        missing=int(flat.size) - count,
        mean=mean,
        m2=m2,
        min=float(present.min()) if keep else None,
        max=float(present.max()) if keep else None,
        edges=edges,
        counts=tuple(int(c) for c in counts),
        shape=tuple(values.shape[1:]),
    )


def _categorical_stats(name: str, column: npt.NDArray[Any], *, min_count: int) -> CategoricalStats:
    missing, uniques, inverse = categorical_codes(name, column)
    tallies = np.bincount(inverse, minlength=len(uniques))
    counts: dict[str, int] = {}
    folded = 0
    for value, tally in zip(uniques, tallies.tolist(), strict=True):
        if tally < min_count or value == OTHER_CATEGORY:
            folded += tally
        else:
            counts[value] = tally
    if folded:
        counts[OTHER_CATEGORY] = folded
    return CategoricalStats(
        count=len(column) - int(missing.sum()), missing=int(missing.sum()), value_counts=counts
    )


def _label_counts(labels: npt.NDArray[Any], *, rows: int, num_classes: int) -> tuple[int, ...]:
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise FeatureError("labels must be a 1-D integer numpy array of class ids")
    if len(labels) != rows:
        raise FeatureError(f"labels have {len(labels)} rows but the columns have {rows}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise FeatureError(f"labels must lie in 0..{num_classes - 1}")
    return tuple(int(c) for c in np.bincount(labels.astype(np.int64), minlength=num_classes))


def compute_stats(
    columns: Mapping[str, npt.NDArray[Any]],
    *,
    schema: Schema,
    labels: npt.NDArray[Any] | None = None,
    config: StatsConfig = DEFAULT_STATS_CONFIG,
) -> DatasetStats:
    """Statistics of every feature column of ``schema`` (other columns are ignored).

    Raw columns follow :class:`~fedge.schema.Schema`'s conventions. ``labels`` (int class
    ids) add per-class row counts. FeatureError names a column that is absent, ragged or of
    the wrong kind or shape; ConfigError flags histogram edges for a non-numeric column.
    """
    unknown = sorted(set(config.histogram_edges) - set(schema.numeric))
    if unknown:
        raise ConfigError(f"histogram_edges given for columns that are not numeric: {unknown}")
    rows = row_count(columns, schema.features)
    stats: dict[str, ColumnStats] = {}
    for name in schema.numeric:
        values = numeric_values(name, columns[name], shape=schema.shape_of(name))
        stats[name] = _numeric_stats(
            values, edges=config.edges_for(name), extremes=config.include_extremes
        )
    for name in schema.categorical:
        stats[name] = _categorical_stats(name, columns[name], min_count=config.min_category_count)
    label_counts = None
    if labels is not None:
        label_counts = _label_counts(labels, rows=rows, num_classes=schema.num_classes)
    return DatasetStats(num_rows=rows, columns=stats, label_counts=label_counts)
