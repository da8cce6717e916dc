"""What may leave the device about local data, and how rare values are hidden first.

Replies never carry rows (see :mod:`fedge.messages`), but aggregates can still spell out a
single row when too few rows stand behind them. Every value a reply names or summarises
must therefore be backed by at least ``k`` local rows:

- categorical value counts: values seen fewer than ``k`` times are folded into one
  ``__other__`` count (``fedge.stats``' ``min_category_count``);
- numeric columns: min and max are never reported (``include_extremes=False``), and a
  column with fewer than ``k`` present values is reported as all missing, because its mean
  would otherwise *be* the value when only one is present;
- evaluation slices (e.g. per region): a slice is named only when it holds ``k`` rows;
  smaller ones are pooled into ``__other__``, itself dropped when under ``k``.

Histograms use the fixed, data-independent edges of ``fedge.stats``, so bin counts say in
which decade a value lies, not the value.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedge.columns import numeric_values
from fedge.data import Dataset
from fedge.stats import OTHER_CATEGORY, DatasetStats, StatsConfig, compute_stats
from fedge.validation import check_int

__all__ = ["DEFAULT_MIN_COUNT", "private_stats", "slice_groups"]

DEFAULT_MIN_COUNT = 5
_MAX_NAME = 128  # the longest slice name an EvalReport takes


def private_stats(table: Dataset, *, k: int = DEFAULT_MIN_COUNT) -> DatasetStats:
    """Mergeable statistics of ``table``'s raw feature columns, safe to send (see above)."""
    check_int(k, "the minimum count k", low=1)
    schema = table.schema
    columns: dict[str, NDArray[Any]] = dict(table.features())
    for name in schema.numeric:
        values = numeric_values(name, columns[name], shape=schema.shape_of(name))
        present = np.count_nonzero(~np.isnan(values))
        if 0 < present < k:
            columns[name] = np.full(values.shape, np.nan, dtype=np.float64)
    config = StatsConfig(min_category_count=k, include_extremes=False)
    return compute_stats(columns, schema=schema, labels=table.labels, config=config)


def slice_groups(
    values: NDArray[Any], *, k: int = DEFAULT_MIN_COUNT
) -> dict[str, NDArray[np.int64]]:
    """Row indices per slice value, for values with at least ``k`` rows; the rest (missing
    values included) pooled under ``__other__`` when they reach ``k`` together."""
    check_int(k, "the minimum count k", low=1)
    keys = ["" if v is None else str(v) for v in values]
    counts = Counter(keys)
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        named = key and counts[key] >= k and key != OTHER_CATEGORY and len(key) <= _MAX_NAME
        name = key if named else OTHER_CATEGORY
        groups.setdefault(name, []).append(index)
    return {
        name: np.asarray(rows, dtype=np.int64)
        for name, rows in sorted(groups.items())
        if len(rows) >= k
    }
