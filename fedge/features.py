"""The one feature transform shared by the cloud trainer and the edge client.

A :class:`FeatureSpec` is built once from (merged) :class:`~fedge.stats.DatasetStats`,
shipped as JSON next to the model, and applied with :meth:`FeatureSpec.transform` on both
sides, so training/serving skew cannot come from two implementations.

- Numeric features are normalised ``(x - offset) / scale``: z-score from the statistics'
  mean and population std (``scale`` 1 when std is 0), or ``"minmax"`` from min/max (digits
  pixels 0..16 -> [0, 1]). A multi-dimensional column uses its pooled statistics, one offset
  and scale for every element. A missing value (NaN) is replaced by ``fill`` *before*
  normalising: the mean by default (0 after z-scoring) or a constant given in raw units.
  ``clip`` bounds the normalised values (``clip_zscore`` sets it for z-scored features).
- Categorical features are one-hot over a vocabulary (most frequent first, ties by value)
  plus ONE out-of-vocabulary bucket, last. Unseen values and missing values (``None``) both
  go to that bucket: there is no separate missing slot.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from fedge.columns import categorical_codes, numeric_values, row_count
from fedge.errors import ConfigError, FeatureError
from fedge.schema import Schema
from fedge.stats import OTHER_CATEGORY, DatasetStats
from fedge.validation import check_number, check_positive

__all__ = [
    "MINMAX",
    "OOV_LABEL",
    "ZSCORE",
    "CategoricalFeature",
    "FeatureSpec",
    "NumericFeature",
]

ZSCORE = "zscore"
MINMAX = "minmax"
OOV_LABEL = "<OOV>"
"""How :meth:`FeatureSpec.feature_names` names the out-of-vocabulary bucket."""

_FORMAT = "fedge.feature_spec"
_VERSION = 1
_NO_NORMALIZATION: Mapping[str, str] = MappingProxyType({})
_NO_FILL: Mapping[str, float] = MappingProxyType({})
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class NumericFeature:
    """A numeric column normalised as ``(x - offset) / scale``, NaN replaced by ``fill`` first."""

    name: str
    normalization: str
    offset: float
    scale: float
    fill: float
    clip: tuple[float, float] | None = None
    shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        where = f"numeric feature {_name(self.name)!r}"
        if self.normalization not in (ZSCORE, MINMAX):
            raise FeatureError(f"{where}: normalization must be {ZSCORE!r} or {MINMAX!r}")
        for key in ("offset", "fill"):
            value = check_number(getattr(self, key), f"{where}: {key}", error=FeatureError)
            object.__setattr__(self, key, value)
        scale = check_positive(self.scale, f"{where}: scale", error=FeatureError)
        object.__setattr__(self, "scale", scale)
        if self.clip is not None:
            if len(self.clip) != 2:
                raise FeatureError(f"{where}: clip must be (low, high), got {self.clip}")
            low, high = (check_number(v, f"{where}: clip", error=FeatureError) for v in self.clip)
            if low >= high:
                raise FeatureError(f"{where}: clip needs low < high, got {self.clip}")
            object.__setattr__(self, "clip", (low, high))
        if not all(isinstance(d, int) and d > 0 for d in self.shape):
            raise FeatureError(f"{where}: shape must hold positive ints, got {self.shape}")
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def width(self) -> int:
        """Output values per example."""
        return math.prod(self.shape)

    def names(self) -> list[str]:
        """Output column names: the column name, or ``name[i,j]`` per element."""
        if not self.shape:
            return [self.name]
        return [f"{self.name}[{','.join(map(str, i))}]" for i in np.ndindex(*self.shape)]

    def encode(self, column: npt.NDArray[Any]) -> FloatArray:
        """Normalised float64 values, shaped ``(n, *shape)``."""
        values = numeric_values(self.name, column, shape=self.shape)
        out: FloatArray = (np.where(np.isnan(values), self.fill, values) - self.offset) / self.scale
        if self.clip is not None:
            np.clip(out, self.clip[0], self.clip[1], out=out)
        return out


@dataclass(frozen=True)
class CategoricalFeature:
    """A categorical column one-hot encoded over ``vocabulary`` plus a last OOV bucket."""

    name: str
    vocabulary: tuple[str, ...]

    def __post_init__(self) -> None:
        _name(self.name)
        vocabulary = tuple(self.vocabulary)
        if not all(isinstance(v, str) for v in vocabulary) or len(set(vocabulary)) != len(
            vocabulary
        ):
            raise FeatureError(
                f"categorical feature {self.name!r}: the vocabulary must hold distinct str"
            )
        object.__setattr__(self, "vocabulary", vocabulary)

    @property
    def width(self) -> int:
        """Output values per example: one per vocabulary entry, plus the OOV bucket."""
        return len(self.vocabulary) + 1

    def names(self) -> list[str]:
        return [f"{self.name}={v}" for v in (*self.vocabulary, OOV_LABEL)]

    def indices(self, column: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        """Per-row bucket ids: the vocabulary index, or ``len(vocabulary)`` for OOV/missing."""
        missing, uniques, inverse = categorical_codes(self.name, column)
        position = {value: i for i, value in enumerate(self.vocabulary)}
        oov = len(self.vocabulary)
        lookup = np.array([position.get(u, oov) for u in uniques], dtype=np.int64)
        ids = np.full(len(column), oov, dtype=np.int64)
        ids[~missing] = lookup[inverse]
        return ids

    def encode(self, column: npt.NDArray[Any]) -> FloatArray:
        """One-hot float64 rows, shaped ``(n, width)``."""
        ids = self.indices(column)
        out = np.zeros((len(ids), self.width), dtype=np.float64)
        out[np.arange(len(ids)), ids] = 1.0
        return out


def _vocabulary(counts: Mapping[str, int], *, max_vocab: int, min_count: int) -> tuple[str, ...]:
    kept = [(-n, v) for v, n in counts.items() if n >= min_count and v != OTHER_CATEGORY]
    return tuple(v for _, v in sorted(kept)[:max_vocab])


@dataclass(frozen=True)
class FeatureSpec:
    """Numeric features (schema order), then categorical ones; JSON-serialisable, versioned.

    The model input is ``(n, *shape)`` when the spec holds exactly one feature and it is a
    multi-dimensional numeric column (an image), else a flat ``(n, d)`` matrix: numeric
    values in order (a multi-dimensional one flattened row-major), then each one-hot block.
    """

    numeric: tuple[NumericFeature, ...]
    categorical: tuple[CategoricalFeature, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "numeric", tuple(self.numeric))
        object.__setattr__(self, "categorical", tuple(self.categorical))
        names = [f.name for f in self.features]
        if not names:
            raise FeatureError("a feature spec needs at least one feature")
        if len(set(names)) != len(names):
            raise FeatureError(f"feature names must be unique, got {names}")

    @property
    def features(self) -> tuple[NumericFeature | CategoricalFeature, ...]:
        return (*self.numeric, *self.categorical)

    @property
    def _image(self) -> bool:
        return len(self.features) == 1 and bool(self.numeric) and bool(self.numeric[0].shape)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The per-example shape of :meth:`transform`'s output."""
        return self.numeric[0].shape if self._image else (self.output_dim,)

    @property
    def output_dim(self) -> int:
        """Values per example (the product of :attr:`output_shape`)."""
        return sum(f.width for f in self.features)

    def feature_names(self) -> list[str]:
        """Names of the output values in flat order, e.g. ``company=Flash Cab``."""
        return [name for f in self.features for name in f.names()]

    def transform(self, columns: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[np.float32]:
        """The float32 model input of raw ``columns`` (other columns are ignored).

        FeatureError names a column that is absent, ragged or of the wrong kind or shape.
        Unseen categories go to the OOV bucket. The inputs are never modified.
        """
        rows = row_count(columns, [f.name for f in self.features])
        if self._image:
            return self.numeric[0].encode(columns[self.numeric[0].name]).astype(np.float32)
        out = np.empty((rows, self.output_dim), dtype=np.float32)
        start = 0
        for feature in self.features:
            block = feature.encode(columns[feature.name])
            out[:, start : start + feature.width] = block.reshape(rows, feature.width)
            start += feature.width
        return out

    @classmethod
    def from_stats(
        cls,
        stats: DatasetStats,
        *,
        schema: Schema,
        max_vocab: int = 100,
        min_count: int = 1,
        normalization: Mapping[str, str] = _NO_NORMALIZATION,
        fill_values: Mapping[str, float] = _NO_FILL,
        clip_zscore: float | None = None,
    ) -> FeatureSpec:
        """The spec of ``schema``'s features from their statistics.

        ``normalization`` maps a numeric column to ``"zscore"`` (default) or ``"minmax"``;
        ``fill_values`` gives a raw-unit constant for a column's missing values instead of
        its mean; ``clip_zscore`` clips z-scores to ``[-clip_zscore, clip_zscore]``. A
        vocabulary keeps at most ``max_vocab`` values seen at least ``min_count`` times
        (never the folded ``__other__`` count). ConfigError for bad options, FeatureError
        when the statistics do not cover the schema.
        """
        _check_options(schema, max_vocab, min_count, normalization, fill_values, clip_zscore)
        numeric = []
        for name in schema.numeric:
            column = stats.numeric(name)
            if column.shape != schema.shape_of(name):
                raise FeatureError(
                    f"statistics of {name!r} have shape {column.shape}, "
                    f"the schema says {schema.shape_of(name)}"
                )
            method = normalization.get(name, ZSCORE)
            if method == ZSCORE:
                offset, scale = column.mean, column.std
                clip = None if clip_zscore is None else (-clip_zscore, clip_zscore)
            elif column.min is None or column.max is None:
                raise FeatureError(
                    f"minmax normalization of {name!r} needs min/max: the statistics have "
                    "none (no values, or computed with include_extremes=False)"
                )
            else:
                offset, scale, clip = column.min, column.max - column.min, None
            numeric.append(
                NumericFeature(
                    name=name,
                    normalization=method,
                    offset=offset,
                    scale=scale if scale > 0 else 1.0,
                    fill=float(fill_values.get(name, column.mean)),
                    clip=clip,
                    shape=column.shape,
                )
            )
        categorical = [
            CategoricalFeature(
                name=name,
                vocabulary=_vocabulary(
                    stats.categorical(name).value_counts, max_vocab=max_vocab, min_count=min_count
                ),
            )
            for name in schema.categorical
        ]
        return cls(numeric=tuple(numeric), categorical=tuple(categorical))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able document (floats kept whole: ``json`` round-trips them exactly)."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "numeric": [
                {
                    "name": f.name,
                    "shape": list(f.shape),
                    "normalization": f.normalization,
                    "offset": f.offset,
                    "scale": f.scale,
                    "fill": f.fill,
                    "clip": None if f.clip is None else list(f.clip),
                }
                for f in self.numeric
            ],
            "categorical": [
                {"name": f.name, "vocabulary": list(f.vocabulary)} for f in self.categorical
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """Rebuild a spec from :meth:`to_dict`'s document; FeatureError when it is invalid."""
        try:
            if (data["format"], data["version"]) != (_FORMAT, _VERSION):
                raise FeatureError(
                    f"expected format {_FORMAT!r} version {_VERSION}, "
                    f"got {data['format']!r} version {data['version']!r}"
                )
            numeric = tuple(
                NumericFeature(
                    name=f["name"],
                    normalization=f["normalization"],
                    offset=f["offset"],
                    scale=f["scale"],
                    fill=f["fill"],
                    clip=None if f["clip"] is None else tuple(f["clip"]),
                    shape=tuple(f["shape"]),
                )
                for f in data["numeric"]
            )
            categorical = tuple(
                CategoricalFeature(name=f["name"], vocabulary=tuple(f["vocabulary"]))
                for f in data["categorical"]
            )
            return cls(numeric=numeric, categorical=categorical)
        except FeatureError as exc:
            raise FeatureError(f"not a valid feature spec: {exc}") from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FeatureError(f"not a valid feature spec: {exc!r}") from exc

    def to_json(self) -> str:
        """The spec as a JSON string (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), allow_nan=False, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        """Parse :meth:`to_json`'s output; FeatureError for text that is not a valid spec."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise FeatureError(f"not a valid feature spec: {exc}") from exc
        if not isinstance(data, dict):
            raise FeatureError(f"not a valid feature spec: expected an object, got {data!r}")
        return cls.from_dict(data)


def _name(value: object) -> str:
    if not isinstance(value, str):
        raise FeatureError(f"a feature name must be a str, got {value!r}")
    return value


def _check_options(
    schema: Schema,
    max_vocab: int,
    min_count: int,
    normalization: Mapping[str, str],
    fill_values: Mapping[str, float],
    clip_zscore: float | None,
) -> None:
    for what, value in (("max_vocab", max_vocab), ("min_count", min_count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{what} must be an int >= 1, got {value!r}")
    for what, mapping in (("normalization", normalization), ("fill_values", fill_values)):
        unknown = sorted(set(mapping) - set(schema.numeric))
        if unknown:
            raise ConfigError(f"{what} given for columns that are not numeric: {unknown}")
    bad = {k: v for k, v in normalization.items() if v not in (ZSCORE, MINMAX)}
    if bad:
        raise ConfigError(f"normalization must be {ZSCORE!r} or {MINMAX!r}, got {bad}")
    for name, fill in fill_values.items():
        if isinstance(fill, bool) or not isinstance(fill, int | float) or not math.isfinite(fill):
            raise ConfigError(f"fill value of {name!r} must be a finite number, got {fill!r}")
    if clip_zscore is not None and not (
        isinstance(clip_zscore, int | float) and math.isfinite(clip_zscore) and clip_zscore > 0
    ):
        raise ConfigError(f"clip_zscore must be a positive number or None, got {clip_zscore!r}")
