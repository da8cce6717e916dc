"""Raw-column readers shared by the statistics and the feature transform.

Raw columns follow :class:`fedge.schema.Schema`: numeric float64 with NaN for missing,
categorical object arrays of str with None for missing. Errors name the column.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fedge.errors import FeatureError

__all__ = ["categorical_codes", "numeric_values", "row_count"]


def row_count(columns: Mapping[str, npt.NDArray[Any]], names: Sequence[str]) -> int:
    """The common row count of ``columns[name]`` for ``names``; FeatureError names a column
    that is absent, not an array, or ragged (its length differs from most columns')."""
    lengths: dict[str, int] = {}
    for name in names:
        if name not in columns:
            raise FeatureError(f"column {name!r} is missing (expected columns {list(names)})")
        column = columns[name]
        if not isinstance(column, np.ndarray) or column.ndim == 0:
            raise FeatureError(
                f"column {name!r} must be a numpy array with one row per example, "
                f"got {type(column).__name__}"
            )
        lengths[name] = len(column)
    if not lengths:
        return 0
    rows = Counter(lengths.values()).most_common(1)[0][0]
    ragged = {name: n for name, n in lengths.items() if n != rows}
    if ragged:
        detail = ", ".join(f"column {name!r} has {n} rows" for name, n in ragged.items())
        raise FeatureError(f"ragged columns: {detail}; the others have {rows}")
    return rows


def numeric_values(
    name: str, column: npt.NDArray[Any], *, shape: tuple[int, ...] = ()
) -> npt.NDArray[np.float64]:
    """Column ``name`` as float64 ``(n, *shape)``; FeatureError for a wrong kind or shape.

    Float and integer columns are accepted; NaN marks a missing value and infinities are
    refused. The result may share memory with ``column``: never write to it.
    """
    if column.dtype.kind not in "fiu":
        raise FeatureError(
            f"numeric column {name!r} must hold float64 (NaN for missing), got dtype {column.dtype}"
        )
    if column.shape[1:] != tuple(shape):
        raise FeatureError(
            f"numeric column {name!r} must have per-example shape {tuple(shape)}, "
            f"got {column.shape[1:]}"
        )
    values = column.astype(np.float64, copy=False)
    if np.isinf(values).any():
        raise FeatureError(f"numeric column {name!r} holds infinite values; NaN marks missing")
    return values


def categorical_codes(
    name: str, column: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.bool_], list[str], npt.NDArray[np.intp]]:
    """``(missing, uniques, inverse)`` of a categorical column, vectorised with ``np.unique``.

    ``missing`` marks the ``None`` rows; ``uniques`` are the sorted distinct values of the
    other rows and ``uniques[inverse[i]]`` is the i-th of those rows. Object arrays of
    str/None and numpy str arrays are accepted; anything else raises FeatureError.
    """
    if column.ndim != 1:
        raise FeatureError(f"categorical column {name!r} must be 1-D, got shape {column.shape}")
    if column.dtype.kind == "U":
        missing = np.zeros(len(column), dtype=np.bool_)
    elif column.dtype.kind == "O":
        missing = np.asarray(np.equal(column, np.asarray(None, dtype=object)), dtype=np.bool_)
    else:
        raise FeatureError(
            f"categorical column {name!r} must be an object array of str/None, "
            f"got dtype {column.dtype}"
        )
    try:
        uniques, inverse = np.unique(column[~missing], return_inverse=True)
    except TypeError as exc:
        raise FeatureError(f"categorical column {name!r} must hold str or None: {exc}") from exc
    values: list[object] = uniques.tolist()
    for value in values:
        if not isinstance(value, str):
            raise FeatureError(
                f"categorical column {name!r} must hold str or None, "
                f"got {type(value).__name__} {value!r}"
            )
    return missing, [str(v) for v in values], inverse.reshape(-1)
